"""Logit fidelity: how far an engine's next-token distributions moved from a stored reference.

Accuracy is a blunt instrument: a 4-bit model can answer the same multiple-choice questions while its output
distribution has measurably moved. llama.cpp judges quantisations by the KL divergence of their next-token
distributions from a reference (``llama-perplexity --kl-divergence``); this module does the same, gated like
any other metric.

For a fixed set of prompts the engine reports, at every position, the log-probabilities of the next token
(teacher forcing over the prompt). A prompt given as ``(context, continuation)`` is scored only where it predicts
the continuation (from the last context token on): the positions a model was trained or is used to predict,
not the inside of a question it only reads. The reference — stored in the baseline file when it is recorded — keeps the
top-k tokens and their log-probabilities per position (compact: k numbers per position, not the vocabulary).
Against it a run reports

- ``kl_mean`` / ``kl_max``: KL(reference || current) per position, in nats, mean and max over positions. The
  reference's top-k tokens are compared one by one and the remaining probability mass as one "rest" bucket, so
  the value is exact when the top-k hold (nearly) all the mass and a slight underestimate otherwise;
- ``top1_agree``: the fraction of positions where the current top-1 token is the reference's top-1;
- ``ref_logprob_mean``: the mean current log-probability of the reference's top-1 token.

Engines expose distributions through ``fidelity_logprobs(prompt, top_k)``: the in-process llama.cpp engine gives
full distributions (keys are token ids); a server gives its top-k per position (keys are token texts, from
``echo`` + ``logprobs``). When a reference token is missing from a server's top-k, its current log-probability
is taken as the smallest one listed (an upper bound), so KL is a lower bound there; the result counts such
positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.core.distributions import Distribution, FullDistribution, TopDistribution
from pytest_llmperf.errors import LlmperfError

__all__ = ["Distribution", "FidelityResult", "FullDistribution", "TopDistribution", "reference_of"]

FIDELITY_METRICS = ("kl_mean", "kl_max", "top1_agree", "ref_logprob_mean")
#: Stored log-probabilities are rounded to this many decimals. KL is first-order in a rounding error that does
#: not keep the distribution normalised, so 1e-9 keeps a same-engine comparison near 1e-10 nats.
_DECIMALS = 9
#: The probability mass outside the reference's top-k is compared as one bucket only above this (below it, the
#: bucket is rounding noise).
_REST_MASS = 1e-6

#: Prompts used when a test gives none: plain English, so any real model has a meaningful distribution.
DEFAULT_PROMPTS = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, looked outside, and saw that it had started to rain.",
    "To make a cup of tea, first boil the water, then pour it over the leaves.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "In 1969, astronauts landed on the Moon for the first time.",
    "def add(a, b):\n    return a + b\n",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
)


#: A prompt: a text (every position counts) or [context, continuation] (the continuation's positions count).
Prompt = str | list[str]


def normalise_prompts(prompts: Sequence[str | Sequence[str]]) -> list[Prompt]:
    """Prompts as stored in a reference (JSON-safe): strings, or ``[context, continuation]`` lists."""
    normalised: list[Prompt] = []
    for item in prompts:
        if isinstance(item, str) and item:
            normalised.append(item)
        elif (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all(isinstance(part, str) for part in item)
            and item[1]
        ):
            normalised.append([item[0], item[1]])
        else:
            raise LlmperfError(
                f"fidelity prompt {item!r} must be a non-empty string or a (context, continuation) pair of strings"
            )
    if not normalised:
        raise LlmperfError("fidelity needs at least one prompt")
    return normalised


def split_prompt(prompt: Prompt) -> tuple[str, str]:
    """``(text, context)``: the whole text to evaluate and the part of it whose positions are skipped."""
    if isinstance(prompt, str):
        return prompt, ""
    return prompt[0] + prompt[1], prompt[0]


@dataclass
class FidelityResult:
    """The four metrics, and how the comparison went."""

    metrics: dict[str, float]
    positions: int
    #: Positions where a reference token was outside the engine's reported top-k (KL is a lower bound there).
    truncated: int = 0
    reference: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> float:
        metrics = self.__dict__.get("metrics")
        if metrics is not None and name in metrics:
            return float(metrics[name])
        raise AttributeError(name)


def distributions_of(engine: Any, prompts: Sequence[Prompt], top_k: int) -> tuple[list[list[Distribution]], str]:
    """The engine's next-token distributions for every prompt, and the kind of token keys it uses.

    Engines implement ``fidelity_logprobs(text, top_k, context="")``: distributions after every token of
    ``text`` from the last token of ``context`` on (all of them when ``context`` is empty).
    """
    logprobs_of = getattr(engine, "fidelity_logprobs", None)
    if logprobs_of is None:
        raise LlmperfError(f"the {engine.backend} engine does not expose log-probabilities for fidelity")
    measured = []
    for prompt in normalise_prompts(prompts):
        text, context = split_prompt(prompt)
        measured.append(logprobs_of(text, top_k, context=context))
    return [rows for rows, _ in measured], measured[0][1]


def reference_of(engine: Any, prompts: Sequence[str | Sequence[str]], top_k: int = 16) -> dict[str, Any]:
    """A reference taken from ``engine`` now (e.g. the F16 model, to compare its quantisations with), for
    ``llmperf.fidelity(..., reference=...)``; ``"source"`` names the engine's model file."""
    from pathlib import Path

    normalised = normalise_prompts(prompts)
    rows, kind = distributions_of(engine, normalised, top_k)
    reference = make_reference(normalised, rows, top_k, kind)
    description = engine.describe()
    model = description.get("model_path") or description.get("model")
    reference["source"] = Path(str(model)).name if model else description.get("backend")
    return reference


def make_reference(
    prompts: Sequence[Prompt], distributions: Sequence[Sequence[Distribution]], top_k: int, key_kind: str
) -> dict[str, Any]:
    """The compact reference stored in the baseline: per prompt and position, top-k keys and log-probs."""
    positions = []
    for per_prompt in distributions:
        rows = []
        for distribution in per_prompt:
            top = distribution.top(top_k)
            rows.append([[key for key, _ in top], [round(lp, _DECIMALS) for _, lp in top]])
        positions.append(rows)
    return {"top_k": top_k, "keys": key_kind, "prompts": list(prompts), "positions": positions}


def check_reference(reference: Any, where: str) -> dict[str, Any]:
    """Validate a stored reference; raises naming ``where`` and what is wrong."""
    if not isinstance(reference, dict):
        raise LlmperfError(f"{where}: the fidelity reference must be an object")
    prompts: Any = reference.get("prompts")
    positions: Any = reference.get("positions")
    try:
        if not isinstance(prompts, list):
            raise LlmperfError("not a list")
        normalise_prompts(prompts)
    except LlmperfError:
        raise LlmperfError(
            f"{where}: the fidelity reference needs 'prompts', a list of strings or [context, continuation] pairs"
        ) from None
    if not isinstance(positions, list) or len(positions) != len(prompts):
        raise LlmperfError(f"{where}: the fidelity reference needs 'positions', one list per prompt")
    for per_prompt in positions:
        for row in per_prompt if isinstance(per_prompt, list) else [None]:
            if not (
                isinstance(row, list)
                and len(row) == 2
                and isinstance(row[0], list)
                and isinstance(row[1], list)
                and len(row[0]) == len(row[1]) > 0
                and all(isinstance(lp, (int, float)) and lp <= 1e-6 for lp in row[1])
            ):
                raise LlmperfError(f"{where}: a fidelity reference position must be [[keys...], [logprobs <= 0...]]")
    if reference.get("keys") not in ("id", "text"):
        raise LlmperfError(f"{where}: the fidelity reference's 'keys' must be 'id' or 'text'")
    return reference


def compare_to_reference(
    reference: Mapping[str, Any], distributions: Sequence[Sequence[Distribution]], key_kind: str
) -> FidelityResult:
    """KL, top-1 agreement and reference-token log-probability of ``distributions`` against ``reference``."""
    if reference["keys"] != key_kind:
        raise LlmperfError(
            f"the fidelity reference was recorded with token {reference['keys']} keys and this engine reports "
            f"token {key_kind} keys (an in-process engine vs a server); record the baseline with this engine"
        )
    kls: list[float] = []
    agree = 0
    ref_logprobs: list[float] = []
    truncated = 0
    for index, (expected, current) in enumerate(zip(reference["positions"], distributions, strict=True)):
        if len(expected) != len(current):
            raise LlmperfError(
                f"fidelity prompt {index} has {len(current)} positions now and {len(expected)} in the reference "
                "(a different tokenizer?); record the baseline again if that is intended"
            )
        for (keys, logprobs), distribution in zip(expected, current, strict=True):
            floor = distribution.floor()
            kl = 0.0
            mass_p = mass_q = 0.0
            missing = False
            current_lps = []
            for key, lp in zip(keys, logprobs, strict=True):
                lq = distribution.logprob(key)
                if lq is None:
                    lq, missing = floor, True
                current_lps.append(lq)
                p = math.exp(lp)
                kl += p * (lp - lq)
                mass_p += p
                mass_q += math.exp(lq)
            rest_p = max(0.0, 1.0 - mass_p)
            rest_q = max(1e-12, 1.0 - mass_q)
            if rest_p > _REST_MASS:
                kl += rest_p * (math.log(rest_p) - math.log(rest_q))
            kls.append(max(kl, 0.0))
            truncated += missing
            top_now = distribution.top(1)
            agree += bool(top_now) and top_now[0][0] == keys[0]
            ref_logprobs.append(current_lps[0])
    if not kls:
        raise LlmperfError("the fidelity prompts gave no position to compare")
    metrics = {
        "kl_mean": sum(kls) / len(kls),
        "kl_max": max(kls),
        "top1_agree": agree / len(kls),
        "ref_logprob_mean": sum(ref_logprobs) / len(ref_logprobs),
    }
    return FidelityResult(metrics, len(kls), truncated)
