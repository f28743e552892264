"""Capacity: the largest concurrency that meets a service-level objective, found by search and cached.

The search is the auto batch-size method: try 1, 2, 4, ... until a level fails the SLO (or ``limit`` is reached),
bisect between the last pass and the first fail, then keep ``margin`` (0.85) of the largest pass, at least 1:
``max_concurrency``. Every level tried is in the trace with its numbers and why it passed or failed.

A stored answer (the baseline's, in a check run) is verified, not recalled (``verify``): the stored level must
still meet the SLO and the next level must still fail it, two trials; a stored level that fails now is searched
below (the capacity fell), a next level that passes is searched above (it rose).

A level is one repetition of the workload at that concurrency (after its warm-up requests), with at least two
requests per slot so the level is really loaded. It fails on any SLO limit exceeded (``ttft_p99 <= 2``,
``e2e_p99 <= 10``, ``tpot_p50 <= 0.05``: seconds; throughputs are lower limits) and on any engine error (a
request that failed, an out-of-memory). Goodput is vLLM's ``--goodput``: requests per second whose own TTFT,
TPOT and end-to-end latency all meet the SLO's per-request limits (its ``ttft``, ``tpot`` and ``e2e`` limits, of
whichever percentile), over the level's wall time; reported at the chosen level.

The result is cached under the plugin's cache dir, keyed by the engine's fingerprint (model sha256, config,
library versions, hardware class), the workload and its prompts file's content (sha256), the SLO and the search
settings; a custom probe only under the caller's ``cache_key``. The cache only speeds up recording (no baseline,
or ``--update-baselines``): its answer is the level verified first instead of a whole search, never a result.
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

from pytest_llmperf.core.metrics import compute_metrics, metric_spec, request_tpot
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
        values = {"ttft": record.ttft, "e2e": record.e2e, "tpot": request_tpot(record)}
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
    """The answer: the largest level that passed, what is kept after the margin, and the trace.

    ``stored`` is the answer the run started from (None: a full search), and ``source`` where it came from:
    ``"baseline"`` (a check run: the level the baseline was recorded at) or ``"cache"`` (recording: the cache's
    last answer). A stored answer is measured, never recalled (``verify``).
    """

    knob: str
    found: int
    max_concurrency: int
    margin: float
    trace: tuple[Trial, ...]
    goodput_req_s: float | None = None
    limit_reached: bool = False
    stored: int | None = None
    source: str | None = None

    @property
    def cached(self) -> bool:
        """The run started from the cache's answer (and verified it)."""
        return self.source == "cache"

    def metrics(self) -> dict[str, float | None]:
        return {"max_concurrency": float(self.max_concurrency), "goodput_req_s": self.goodput_req_s}

    def describe(self) -> str:
        tried = ", ".join(f"{t.level} {'pass' if t.passed else 'fail (' + t.reason + ')'}" for t in self.trace)
        top = " (the search limit: capacity may be higher)" if self.limit_reached else ""
        return f"max {self.knob} {self.max_concurrency} = {self.margin:g} x {self.found}{top}; {self.how()}; " \
               f"tried {tried}"

    def how(self) -> str:
        """How the answer was reached, in words: searched, or the stored answer verified, lowered or raised."""
        if self.stored is None:
            return "searched (no stored answer to verify)"
        answer = ("the cached answer" if self.cached else "the baseline's answer") + f" {self.stored}"
        if self.cached:
            answer += " (the cache only speeds up recording: its answer is measured, not trusted)"
        first = self.trace[0] if self.trace else None
        if self.found == self.stored:
            above = next((t for t in self.trace if t.level > self.stored), None)
            if self.stored == 0:
                return f"verified {answer}: {first.level if first else '?'} still fails the SLO"
            if above is None:
                return f"verified {answer}: {self.stored} still meets the SLO at the search limit"
            return f"verified {answer}: {self.stored} still meets the SLO and {above.level} does not"
        if self.found < self.stored:
            why = f" ({first.reason})" if first is not None and not first.passed else ""
            return f"{answer} no longer meets the SLO{why}: searched down to {self.found}"
        above = next((t for t in self.trace if t.level > self.stored), None)
        return f"{above.level if above else self.found} meets the SLO above {answer}: searched up to {self.found}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "trace": [asdict(trial) for trial in self.trace]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CapacityResult:
        """A result stored in the cache (its ``source`` is "cache")."""
        trace = tuple(Trial(int(t["level"]), bool(t["passed"]), str(t["reason"]), dict(t["metrics"]))
                      for t in data["trace"])
        return cls(str(data["knob"]), int(data["found"]), int(data["max_concurrency"]), float(data["margin"]), trace,
                   data.get("goodput_req_s"), bool(data.get("limit_reached")), source="cache")


def _check_settings(start: int, limit: int, margin: float) -> None:
    if not 0 < margin <= 1:
        raise LlmperfError(f"capacity margin must be in (0, 1], got {margin!r}")
    if start < 1 or limit < start:
        raise LlmperfError(f"capacity search needs 1 <= start <= limit, got start={start}, limit={limit}")


def kept(found: int, margin: float) -> int:
    """What is claimed of the largest level that passed: ``margin`` of it, at least 1 (0 when none passed)."""
    return max(1, math.floor(found * margin)) if found else 0


class _Trials:
    """The probe with its trace: ``passes(level)`` runs one trial and records it."""

    def __init__(self, probe: Callable[[int], Trial]) -> None:
        self.probe = probe
        self.trace: list[Trial] = []

    def passes(self, level: int) -> bool:
        trial = self.probe(level)
        self.trace.append(trial)
        return trial.passed

    def grow(self, last_pass: int, level: int, limit: int) -> tuple[int, int | None]:
        """Try ``level``, doubling while it passes (up to ``limit``): the last pass and the first fail (None:
        ``limit`` passed)."""
        while self.passes(level):
            last_pass = level
            if level >= limit:
                return last_pass, None
            level = min(level * 2, limit)
        return last_pass, level

    def bisect(self, last_pass: int, first_fail: int) -> int:
        """The largest passing level between ``last_pass`` (passed, or nothing known) and ``first_fail``."""
        while first_fail - last_pass > 1:
            middle = (last_pass + first_fail) // 2
            last_pass, first_fail = (middle, first_fail) if self.passes(middle) else (last_pass, middle)
        return last_pass


def search(probe: Callable[[int], Trial], *, knob: str = "concurrency", start: int = 1, limit: int = 256,
           margin: float = DEFAULT_MARGIN) -> CapacityResult:
    """Exponential growth from ``start`` until a level fails or passes ``limit``, then bisection between the last
    pass and the first fail; ``margin`` of the largest pass is kept (at least 1; 0 when even ``start`` fails)."""
    _check_settings(start, limit, margin)
    trials = _Trials(probe)
    last_pass, first_fail = trials.grow(0, start, limit)
    if first_fail is not None and last_pass:
        last_pass = trials.bisect(last_pass, first_fail)
    return CapacityResult(knob, last_pass, kept(last_pass, margin), margin, tuple(trials.trace),
                          limit_reached=first_fail is None)


def verify(probe: Callable[[int], Trial], stored: int, *, knob: str = "concurrency", start: int = 1,
           limit: int = 256, margin: float = DEFAULT_MARGIN, source: str = "baseline") -> CapacityResult:
    """Measure a stored answer (``stored``: the largest level that passed when it was recorded) instead of
    trusting it: two trials when nothing changed.

    - ``stored`` must still meet the SLO and ``stored + 1`` must still fail it: the answer stands.
    - ``stored`` fails now: the capacity fell; bisection below it (down to ``start``) finds the real answer.
    - ``stored + 1`` passes too: the capacity rose; the search goes on upwards (doubling, then bisection).
    A stored 0 (even ``start`` failed) is verified by ``start`` alone; a stored answer at or above ``limit`` by
    ``limit`` alone (nothing above it is tried). The levels are assumed monotone, as in ``search``.
    """
    _check_settings(start, limit, margin)
    trials = _Trials(probe)
    level = min(stored, limit)
    first_fail: int | None
    if level < start:
        found, first_fail = trials.grow(0, start, limit)
        if first_fail is not None and found:
            found = trials.bisect(found, first_fail)
    elif not trials.passes(level):
        first_fail = level
        found = trials.bisect(start - 1, level)
        found = found if found >= start else 0
    elif level == limit:
        found, first_fail = level, None
    else:
        found, first_fail = trials.grow(level, level + 1, limit)
        if first_fail is not None:
            found = trials.bisect(found, first_fail)
    return CapacityResult(knob, found, kept(found, margin), margin, tuple(trials.trace),
                          limit_reached=first_fail is None, stored=level, source=source)


def baseline_level(baseline_dir: Path, test: str, hardware: str | None, name: str | None, margin: float,
                   limit: int) -> int | None:
    """The largest level that passed when ``hardware``'s baseline of ``test`` was recorded: stored beside the
    metrics (the call's ``reference``), else worked back from its ``max_concurrency`` (``stored_level``); None
    without a readable baseline entry (the verdict reports what is wrong with the file). ``name`` is the call's
    ``name=``."""
    from pytest_llmperf.core.baseline import baseline_path, load_baseline

    try:
        stored = load_baseline(baseline_path(baseline_dir, test))
        entry = stored.for_hardware(hardware) if stored is not None else None
    except LlmperfError:
        return None
    if entry is None:
        return None
    kept = entry.reference
    if isinstance(kept, dict) and "by_name" in kept:  # several calls stored data: one entry per call label
        by_name = kept["by_name"]
        kept = by_name.get(name or "capacity()") if isinstance(by_name, dict) else None
    recorded = kept.get("capacity") if isinstance(kept, dict) else None
    found = recorded.get("found") if isinstance(recorded, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found >= 0:
        return found
    record = entry.metrics.get(f"{name}.max_concurrency" if name else "max_concurrency")
    return stored_level(record.value, margin, limit) if record is not None else None


def stored_level(max_concurrency: float, margin: float, limit: int) -> int | None:
    """The largest level that passed, from a ``max_concurrency`` recorded without it (a baseline written before
    the level was stored): the largest level up to ``limit`` that ``margin`` keeps as ``max_concurrency``;
    None when there is none (the margin or the limit changed)."""
    wanted = int(max_concurrency)
    if wanted != max_concurrency or wanted < 0:
        return None
    if wanted == 0:
        return 0
    return next((level for level in range(limit, 0, -1) if kept(level, margin) == wanted), None)


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
