"""Per-metric tolerances: relative (``"5%"``), absolute (``0.02``, ``"0.5GiB"``, ``"20ms"``), or for accuracy
metrics in standard errors (``"2se"``: the drop may reach twice the combined standard error of the two scores,
``sqrt(se_baseline**2 + se_current**2)``, as lm-eval reports them).

A tolerance says how much *worse* a metric may get before it counts as a regression; the metric's direction
(see ``metrics.metric_spec``) decides which way is worse. Tolerances are looked up by metric name through
glob patterns (``"*_tok_s"``, ``"e2e_*"``), the most specific source winning: a test's marker, then the
command line, then the ini file, then the built-in defaults below.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pytest_llmperf.core.metrics import MetricSpec, all_metric_names, metric_spec, split_concurrency, split_prefix
from pytest_llmperf.errors import LlmperfError

# Wide enough for a shared 2-core machine (docs/noise.md has the measured spread),
# narrow enough that a 2x slowdown fails.
DEFAULT_TOLERANCES: dict[str, str] = {
    "*_tok_s": "30%",
    "req_s": "30%",
    "wall_time_s": "40%",
    "e2e_*": "40%",
    "ttft_*": "50%",
    "tpot_*": "40%",
    "itl_*": "60%",
    "rss_peak_gib": "20%",
    "mem_*": "10%",
    "gpu_*": "20%",
    # Logit fidelity: in-process engines repeat their numbers exactly; a server's prefix cache moved KL by ~1e-6
    # nats here. These let that through and catch a 4-bit quantisation of the trained model (KL 2e-4 to 2e-3;
    # docs/models.md). Any position whose greedy (top-1) token changed fails: greedy output changed.
    "kl_mean": "1e-5",
    "kl_max": "1e-3",
    "top1_agree": "0",
    "ref_logprob_mean": "0.01",
    "speedup": "30%",
    "efficiency": "30%",
    # The KV buffer llama.cpp allocates is fixed by the model and config: any growth is a change. So are the
    # engine's own buffers (model, KV, compute, output), as llama.cpp logs them.
    "kv_cache_gib_*": "0",
    "engine_*_gib": "0",
    # vLLM's own count of max_model_len requests its KV cache holds: fixed by the model, the config and the KV
    # space it was given.
    "kv_max_concurrency": "0",
    # Instructions per token do not move with the machine (measure/instructions.py): 1% catches a 2% change in
    # llama.cpp's work (benchmarks/instructions_noise.py) where the wall clock cannot see 10%.
    "*_instructions_per_token": "1%",
    "tg_roofline_pct": "30%",
    "bandwidth_gb_s": "30%",
    "max_concurrency": "20%",
    "goodput_req_s": "30%",
    # Accuracy: any drop, when the documents that moved make it significant (core/paired.py): the paired test,
    # not a tolerance, separates a real change from the few documents a nondeterministic engine flips.
    "*.*": "0",
}

_UNIT_SCALE: dict[str, tuple[str, float]] = {
    "s": ("s", 1.0),
    "ms": ("s", 1e-3),
    "us": ("s", 1e-6),
    "gib": ("GiB", 1.0),
    "mib": ("GiB", 1.0 / 1024),
    "kib": ("GiB", 1.0 / 1024**2),
    "gb": ("GiB", 1e9 / 1024**3),
    "mb": ("GiB", 1e6 / 1024**3),
}
_TOLERANCE = re.compile(r"^\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>%|[A-Za-z]+)?\s*$")


@dataclass(frozen=True)
class Tolerance:
    """How much worse a metric may get: a fraction of the baseline, or an amount in the metric's unit."""

    kind: Literal["relative", "absolute", "stderr"]
    amount: float
    text: str

    def allowed(self, baseline: float, stderr: float | None = None) -> float:
        """The largest change in the bad direction that is still within tolerance.

        ``stderr`` is the combined standard error of baseline and current value (``stderr`` tolerances only).
        """
        if self.kind == "relative":
            return abs(baseline) * self.amount
        if self.kind == "stderr":
            if stderr is None:
                raise LlmperfError(
                    f"tolerance {self.text!r} is in standard errors, but the baseline or the current value has "
                    "none; record the baseline again with its stderr, or use an absolute tolerance"
                )
            return self.amount * stderr
        return self.amount

    def __str__(self) -> str:
        return self.text


def parse_tolerance(value: object, spec: MetricSpec, source: str) -> Tolerance:
    """Parse ``value`` as a tolerance for ``spec``; ``source`` names where it came from for errors."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LlmperfError(f"{source}: tolerance {value!r} for {spec.name} must be a number or a string like '5%'")
    text = str(value)
    match = _TOLERANCE.match(text)
    if match is None:
        raise LlmperfError(
            f"{source}: cannot parse tolerance {text!r} for {spec.name}; "
            "use a percentage ('5%'), a number in the metric's unit, a number with a unit ('20ms', '0.5GiB'), "
            "or for accuracy a number of standard errors ('2se')"
        )
    number = float(match.group("number"))
    if not math.isfinite(number):
        # "1e999%" would allow any drop: a gate that can never fail.
        raise LlmperfError(f"{source}: tolerance {text!r} for {spec.name} is not a finite number")
    unit = match.group("unit")
    if unit == "%":
        return Tolerance("relative", number / 100.0, text)
    if unit is None:
        return Tolerance("absolute", number, text)
    if unit.lower() == "se":
        if spec.unit != "score":
            raise LlmperfError(
                f"{source}: tolerance {text!r} in standard errors only fits accuracy metrics, not {spec.name}"
            )
        return Tolerance("stderr", number, text)
    base_unit, scale = _UNIT_SCALE.get(unit.lower(), ("", 0.0))
    if base_unit != spec.unit:
        raise LlmperfError(
            f"{source}: tolerance {text!r} has unit {unit!r}, which does not fit {spec.name} "
            f"(measured in {spec.unit}); use a percentage or a number in {spec.unit}"
        )
    return Tolerance("absolute", number * scale, text)


def _check_pattern(pattern: str, source: str) -> None:
    if any(ch in pattern for ch in "*?["):
        if "." in pattern or "@c" in pattern or any(fnmatch.fnmatchcase(name, pattern) for name in all_metric_names()):
            return
        raise LlmperfError(f"{source}: tolerance pattern {pattern!r} matches no metric")
    try:
        metric_spec(pattern)  # raises, naming the known metrics (and the closest), for an unknown name
    except LlmperfError as error:
        raise LlmperfError(f"{source}: {error}") from None


def parse_assignments(lines: Iterable[str], source: str) -> dict[str, str]:
    """Parse ``metric = tolerance`` lines (ini ``llmperf_tolerances`` and ``--llmperf-tolerance``)."""
    table: dict[str, str] = {}
    for line in lines:
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise LlmperfError(f"{source}: expected 'metric = tolerance', got {line!r}")
        table[name.strip()] = value.strip()
    return table


def _several_bad(problems: list[tuple[str, str, object, str]]) -> str:
    """One error for every bad entry, each line naming the key and the value: fixing the first would only show
    the next."""
    sources = list(dict.fromkeys(source for source, _, _, _ in problems))
    head = f"{sources[0]}: " if len(sources) == 1 else ""
    lines = [f"{head}{len(problems)} bad tolerances:"]
    for source, key, value, problem in problems:
        lines.append(f"  {'' if head else f'{source}: '}{key} = {value!r}: {problem}")
    return "\n".join(lines)


class ToleranceTable:
    """Ordered layers of ``pattern -> tolerance``; the first layer with a matching pattern wins."""

    def __init__(self, layers: Iterable[tuple[str, Mapping[str, object]]]) -> None:
        self._layers = [(source, dict(table)) for source, table in layers]
        problems: list[tuple[str, str, object, str]] = []  # (source, key, value, what is wrong)
        for source, table in self._layers:
            for pattern, value in table.items():
                try:
                    _check_pattern(pattern, source)
                    if not any(ch in pattern for ch in "*?["):
                        parse_tolerance(value, metric_spec(pattern), source)
                except LlmperfError as error:
                    problems.append((source, pattern, value, str(error).removeprefix(f"{source}: ")))
        if len(problems) == 1:
            source, _, _, problem = problems[0]
            raise LlmperfError(f"{source}: {problem}")
        if problems:
            raise LlmperfError(_several_bad(problems))

    def with_layer(self, source: str, table: Mapping[str, object]) -> ToleranceTable:
        """A table where ``table`` (from ``source``) takes precedence over this one."""
        return ToleranceTable([(source, table), *self._layers])

    def for_metric(self, name: str) -> Tolerance:
        spec = metric_spec(name)
        # ``completion_tok_s@c4`` takes its own entry if there is one, else completion_tok_s's. A named call's
        # ``decode.completion_tok_s`` takes an exact entry of that name, else completion_tok_s's (patterns are
        # matched against the unprefixed name: "*.*" is accuracy's, not every named metric's).
        prefix, unprefixed = split_prefix(name)
        base = split_concurrency(unprefixed)[0]
        names = [(name, prefix is None)]
        if prefix is not None:
            names.append((unprefixed, True))
        if base != unprefixed:
            names.append((base, True))
        for source, table in self._layers:
            for candidate, patterns in names:
                # An exact name beats a pattern within one layer; among patterns the longest wins.
                if candidate in table:
                    return parse_tolerance(table[candidate], spec, source)
                if not patterns:
                    continue
                matches = [pattern for pattern in table if fnmatch.fnmatchcase(candidate, pattern)]
                if matches:
                    pattern = max(matches, key=len)
                    return parse_tolerance(table[pattern], spec, f"{source} ({pattern})")
        raise LlmperfError(f"no tolerance is configured for metric {name!r}; add one to llmperf_tolerances")
