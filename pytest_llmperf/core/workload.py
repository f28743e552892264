"""Workloads (what to send) and request records (what happened), shared by every engine."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.errors import LlmperfError


@dataclass(frozen=True)
class Workload:
    """A fixed-length workload in the manner of llama-bench.

    Every request has ``n_prompt`` prompt tokens (unique per request, so no prefix cache inflates the numbers)
    and generates exactly ``n_predict`` tokens (EOS suppressed). ``warmup`` requests run once before the
    measured repetitions, each of which sends ``requests`` requests. With ``prompts_file`` (JSONL with a
    ``"prompt"`` key per line) the prompts come from the file instead, each made unique by a request tag.

    Measure until sure: ``repetitions`` is the fewest repetitions; more are added, one at a time, until every
    gated metric is sure (its interval against the baseline clears the tolerance on one side, or without a
    baseline its median's interval is narrower than half the tolerance), up to ``max_repetitions`` (default
    ten times ``repetitions``) or ``max_seconds`` of measuring. ``max_repetitions=repetitions`` measures a
    fixed number.
    """

    n_prompt: int = 128
    n_predict: int = 128
    requests: int = 8
    warmup: int = 1
    repetitions: int = 3
    seed: int = 0
    prompts_file: str | None = None
    concurrency: int = 1
    request_rate: float | None = None
    max_repetitions: int | None = None
    max_seconds: float = 120.0

    def __post_init__(self) -> None:
        for name in ("n_prompt", "n_predict", "requests", "repetitions", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LlmperfError(f"Workload.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise LlmperfError(f"Workload.warmup must be a non-negative integer, got {self.warmup!r}")
        if self.request_rate is not None and not self.request_rate > 0:
            raise LlmperfError(f"Workload.request_rate must be > 0 requests/s, got {self.request_rate!r}")
        most = self.max_repetitions
        if most is not None and (not isinstance(most, int) or isinstance(most, bool) or most < self.repetitions):
            raise LlmperfError(
                f"Workload.max_repetitions must be a whole number >= repetitions ({self.repetitions}), got {most!r}"
            )
        if isinstance(self.max_seconds, bool) or not isinstance(self.max_seconds, (int, float)) or \
                not self.max_seconds > 0:
            raise LlmperfError(f"Workload.max_seconds must be > 0 seconds, got {self.max_seconds!r}")

    @property
    def most_repetitions(self) -> int:
        """The most repetitions measure-until-sure may take."""
        return self.max_repetitions if self.max_repetitions is not None else 10 * self.repetitions

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_prompts(self) -> list[str]:
        """Prompts of ``prompts_file``; raises naming the file and line on bad input."""
        if self.prompts_file is None:
            return []
        path = Path(self.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as error:
            raise LlmperfError(f"cannot read prompts file {path}: {error.strerror}") from None
        prompts = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise LlmperfError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str):
                raise LlmperfError(f'{path}:{number}: each line must be an object with a string "prompt"')
            prompts.append(entry["prompt"])
        if not prompts:
            raise LlmperfError(f"prompts file {path} holds no prompt")
        return prompts


@dataclass(frozen=True)
class Request:
    """One request: a prompt as token ids (exact length) or text, and the tokens to generate."""

    prompt: list[int] | str
    max_tokens: int


@dataclass
class RequestRecord:
    """Timestamps (``time.perf_counter`` seconds) and token counts of one completed request.

    ``prompt_tokens`` is None when it could not be known (a server that sends no usage and has no tokenize
    route). ``counted_by`` says where the token counts came from: ``"engine"`` (the in-process engine's own
    counters), ``"usage"`` (the server's usage report) or ``"chunks"`` (streamed chunks with text, counted).
    """

    t_send: float
    t_done: float
    prompt_tokens: int | None
    output_tokens: int
    chunk_times: list[float] = field(default_factory=list)
    counted_by: str = "engine"
    #: False when the engine could not tell when this request finished (``t_done`` is then its batch's end):
    #: its end-to-end latency is left out of the e2e percentiles, never estimated.
    e2e_known: bool = True

    @property
    def e2e(self) -> float:
        return self.t_done - self.t_send

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.t_send if self.chunk_times else None

    @property
    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in zip(self.chunk_times, self.chunk_times[1:], strict=False)]
