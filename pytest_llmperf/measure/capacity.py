"""Capacity: the largest concurrency that meets a service-level objective, found by search and cached.

The search is the auto batch-size method: try 1, 2, 4, ... until a level fails the SLO (or ``limit`` is reached),
bisect between the last pass and the first fail, then keep ``margin`` (0.85) of the largest pass, at least 1:
``max_concurrency``. Every level tried is in the trace with its numbers and why it passed or failed.

A level is one repetition of the workload at that concurrency (after its warm-up requests), with at least two
requests per slot so the level is really loaded. It fails on any SLO limit exceeded (``ttft_p99 <= 2``,
``e2e_p99 <= 10``, ``tpot_p50 <= 0.05``: seconds; throughputs are lower limits) and on any engine error (a
request that failed, an out-of-memory). Goodput is vLLM's ``--goodput``: requests per second whose own TTFT,
TPOT and end-to-end latency all meet the SLO's per-request limits (its ``ttft``, ``tpot`` and ``e2e`` limits, of
whichever percentile), over the level's wall time; reported at the chosen level.

The result is cached under the plugin's cache dir, keyed by the engine's fingerprint (model sha256, config,
library versions, hardware class), the workload and its prompts file's content (sha256), the SLO and the search
settings; a custom probe only under the caller's ``cache_key``. A later run reuses it unless
``--update-baselines`` is given or any of those changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_llmperf.core.metrics import compute_metrics, metric_spec
from pytest_llmperf.core.workload import RequestRecord, Workload
from pytest_llmperf.errors import EngineError, LlmperfError

DEFAULT_MARGIN = 0.85
_FAMILY = re.compile(r"^(ttft|tpot|e2e)_")


def check_slo(slo: Mapping[str, float]) -> dict[str, float]:
    """``slo`` with every name a known metric and every limit a positive number."""
    if not slo:
        raise LlmperfError("capacity needs an SLO, e.g. slo={'ttft_p99': 2.0}")
    checked = {}
    for name, limit in slo.items():
        try:
            metric_spec(name)
        except LlmperfError as error:
            raise LlmperfError(f"capacity SLO: {error}") from None
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise LlmperfError(f"capacity SLO {name}: the limit must be a positive number, got {limit!r}")
        checked[name] = float(limit)
    return checked


def slo_failures(slo: Mapping[str, float], metrics: Mapping[str, float | None]) -> list[str]:
    """Why ``metrics`` miss ``slo`` (empty: they meet it). An unmeasured metric misses it."""
    failures = []
    for name, limit in slo.items():
        value = metrics.get(name)
        higher = metric_spec(name).direction == "higher"
        if value is None:
            failures.append(f"{name} unavailable")
        elif (value < limit) if higher else (value > limit):
            failures.append(f"{name} {value:.4g} {'<' if higher else '>'} {limit:g}")
    return failures


def goodput(records: list[RequestRecord], slo: Mapping[str, float]) -> float | None:
    """Requests per second meeting every per-request limit of ``slo`` (vLLM's goodput); None with no such limit."""
    limits = {match[1]: limit for name, limit in slo.items() if (match := _FAMILY.match(name))}
    if not limits or not records:
        return None

    def good(record: RequestRecord) -> bool:
        values = {"ttft": record.ttft, "e2e": record.e2e,
                  "tpot": (record.e2e - record.ttft) / (record.output_tokens - 1)
                  if record.ttft is not None and record.output_tokens > 1 else None}
        return all(values[family] is not None and values[family] <= limit  # type: ignore[operator]
                   for family, limit in limits.items())

    duration = max(r.t_done for r in records) - min(r.t_send for r in records)
    return sum(good(record) for record in records) / duration if duration > 0 else None


@dataclass(frozen=True)
class Trial:
    """One level tried: passed or not, why, and its numbers."""

    level: int
    passed: bool
    reason: str
    metrics: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class CapacityResult:
    """The search's answer: the largest level that passed, what is kept after the margin, and the trace."""

    knob: str
    found: int
    max_concurrency: int
    margin: float
    trace: tuple[Trial, ...]
    goodput_req_s: float | None = None
    cached: bool = False
    limit_reached: bool = False

    def metrics(self) -> dict[str, float | None]:
        return {"max_concurrency": float(self.max_concurrency), "goodput_req_s": self.goodput_req_s}

    def describe(self) -> str:
        tried = ", ".join(f"{t.level} {'pass' if t.passed else 'fail (' + t.reason + ')'}" for t in self.trace)
        top = " (the search limit: capacity may be higher)" if self.limit_reached else ""
        return (f"max {self.knob} {self.max_concurrency} = {self.margin:g} x {self.found}{top}"
                f"{' (cached)' if self.cached else ''}; tried {tried}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "trace": [asdict(trial) for trial in self.trace]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CapacityResult:
        trace = tuple(Trial(int(t["level"]), bool(t["passed"]), str(t["reason"]), dict(t["metrics"]))
                      for t in data["trace"])
        return cls(str(data["knob"]), int(data["found"]), int(data["max_concurrency"]), float(data["margin"]), trace,
                   data.get("goodput_req_s"), True, bool(data.get("limit_reached")))


def search(probe: Callable[[int], Trial], *, knob: str = "concurrency", start: int = 1, limit: int = 256,
           margin: float = DEFAULT_MARGIN) -> CapacityResult:
    """Exponential growth from ``start`` until a level fails or passes ``limit``, then bisection between the last
    pass and the first fail; ``margin`` of the largest pass is kept (at least 1; 0 when even ``start`` fails)."""
    if not 0 < margin <= 1:
        raise LlmperfError(f"capacity margin must be in (0, 1], got {margin!r}")
    if start < 1 or limit < start:
        raise LlmperfError(f"capacity search needs 1 <= start <= limit, got start={start}, limit={limit}")
    trace: list[Trial] = []

    def tried(level: int) -> bool:
        trial = probe(level)
        trace.append(trial)
        return trial.passed

    last_pass, first_fail, level = 0, None, start
    while True:
        if not tried(level):
            first_fail = level
            break
        last_pass = level
        if level == limit:
            break
        level = min(level * 2, limit)
    if first_fail is not None and last_pass:
        low, high = last_pass, first_fail
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if tried(middle) else (low, middle)
        last_pass = low
    kept = max(1, math.floor(last_pass * margin)) if last_pass else 0
    return CapacityResult(knob, last_pass, kept, margin, tuple(trace), limit_reached=first_fail is None)


def workload_probe(engine: Any, workload: Workload, slo: Mapping[str, float],
                   keep: tuple[str, ...] = ("ttft_p99", "e2e_p99", "tpot_p50", "completion_tok_s")) -> \
        Callable[[int], Trial]:
    """A probe that runs ``workload`` at the level's concurrency: warm-up, then one round of
    ``max(workload.requests, 2 x level)`` requests; the records' metrics against ``slo``."""
    from pytest_llmperf.measure.runner import build_requests

    prompts = workload.load_prompts()

    def probe(level: int) -> Trial:
        shaped = replace(workload, concurrency=level, requests=max(workload.requests, 2 * level))
        try:
            if workload.warmup:
                engine.run(build_requests(engine, shaped, -1, prompts)[: workload.warmup], concurrency=level)
            records = engine.run(build_requests(engine, shaped, 0, prompts), concurrency=level,
                                 request_rate=workload.request_rate, seed=workload.seed)
        except EngineError as error:
            return Trial(level, False, f"engine error: {error}")
        metrics = compute_metrics(records)
        failures = slo_failures(slo, metrics)
        kept = {name: metrics.get(name) for name in (*slo, *keep)}
        kept["goodput_req_s"] = goodput(records, slo)
        return Trial(level, not failures, "; ".join(failures) or "meets the SLO", kept)

    return probe


def prompts_sha256(workload: Workload) -> str | None:
    """The sha256 of the workload's prompts file's content (None: generated prompts): longer prompts in the same
    file are another answer. A file that cannot be read raises naming it (``Workload.load_prompts``)."""
    if workload.prompts_file is None:
        return None
    try:
        return hashlib.sha256(Path(workload.prompts_file).read_bytes()).hexdigest()
    except OSError as error:
        raise LlmperfError(f"cannot read prompts file {workload.prompts_file}: {error.strerror or error}") from None


def cache_key(fingerprint: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """A key over what the answer depends on (the fingerprint without volatile fields, and the settings)."""
    text = json.dumps({"fingerprint": fingerprint, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_cached(key: str) -> CapacityResult | None:
    from pytest_llmperf.assets.model import cache_dir

    path = cache_dir() / "capacity" / f"{key}.json"
    try:
        return CapacityResult.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: search again (the cache is never the only copy of anything)


def store_cached(key: str, result: CapacityResult) -> None:
    from pytest_llmperf.assets.model import cache_dir
    from pytest_llmperf.core.baseline import write_atomically

    directory = cache_dir() / "capacity"
    directory.mkdir(parents=True, exist_ok=True)
    write_atomically(directory / f"{key}.json", json.dumps(result.to_json(), indent=2, sort_keys=True) + "\n")
