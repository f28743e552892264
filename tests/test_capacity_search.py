"""Capacity search: exponential then binary search with a margin, on a known latency curve (the exact answer is
known), SLO checks, goodput, the cache, and a real llama_cpp.server."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmperf.core.workload import Request, RequestRecord, Workload
from pytest_llmperf.errors import EngineError, LlmperfError
from pytest_llmperf.measure import calls
from pytest_llmperf.measure.capacity import Trial, check_slo, goodput, search, slo_failures, workload_probe


def passes_up_to(best: int) -> Any:
    return lambda level: Trial(level, level <= best, "ok" if level <= best else "too slow")


def test_search_grows_exponentially_then_bisects_and_keeps_the_margin() -> None:
    result = search(passes_up_to(11))
    assert [trial.level for trial in result.trace] == [1, 2, 4, 8, 16, 12, 10, 11]
    assert result.found == 11 and result.max_concurrency == 9  # floor(0.85 x 11)
    assert not result.limit_reached
    assert "max concurrency 9 = 0.85 x 11" in result.describe()


def test_search_edges() -> None:
    assert search(passes_up_to(0)).max_concurrency == 0  # even 1 fails: nothing is claimed
    assert search(passes_up_to(1)).max_concurrency == 1  # at least 1 once 1 passed
    top = search(passes_up_to(1000), limit=48)
    assert [t.level for t in top.trace] == [1, 2, 4, 8, 16, 32, 48] and top.found == 48 and top.limit_reached
    with pytest.raises(LlmperfError, match="margin must be in"):
        search(passes_up_to(3), margin=1.5)


def test_slo_names_and_limits_are_checked() -> None:
    assert check_slo({"ttft_p99": 2}) == {"ttft_p99": 2.0}
    with pytest.raises(LlmperfError, match="unknown metric 'ttft_p98'"):
        check_slo({"ttft_p98": 2})
    with pytest.raises(LlmperfError, match="must be a positive number"):
        check_slo({"e2e_p99": -1})
    assert slo_failures({"ttft_p99": 2.0, "completion_tok_s": 10.0}, {"ttft_p99": 2.5, "completion_tok_s": 5.0}) == [
        "ttft_p99 2.5 > 2", "completion_tok_s 5 < 10"]
    assert slo_failures({"ttft_p99": 2.0}, {"ttft_p99": None}) == ["ttft_p99 unavailable"]


def record(start: float, ttft: float, e2e: float, tokens: int = 5) -> RequestRecord:
    return RequestRecord(start, start + e2e, 4, tokens, [start + ttft + i * (e2e - ttft) / (tokens - 1)
                                                         for i in range(tokens)])


def test_goodput_counts_requests_meeting_every_per_request_limit() -> None:
    records = [record(0.0, 0.1, 1.0), record(0.0, 0.5, 1.0), record(0.0, 0.1, 2.0)]
    # Over 2 s of wall time: only the first meets ttft <= 0.2 and e2e <= 1.5.
    assert goodput(records, {"ttft_p99": 0.2, "e2e_p99": 1.5}) == pytest.approx(0.5)
    assert goodput(records, {"completion_tok_s": 1.0}) is None


class QueueingEngine:
    """One sequence at a time: at concurrency c, requests queue and TTFT is ``0.1 x c`` seconds."""

    backend = "fake"

    def __init__(self, fail_above: int | None = None) -> None:
        self.fail_above = fail_above
        self.levels: list[int] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "engine_config": {"slots": 1}}

    def make_prompt(self, seed: int, n_tokens: int) -> list[int]:
        return [seed] * n_tokens

    def run(self, requests: list[Request], concurrency: int = 1, request_rate: float | None = None,
            seed: int = 0) -> list[RequestRecord]:
        if self.fail_above is not None and concurrency > self.fail_above:
            raise EngineError("out of memory")
        self.levels.append(concurrency)
        return [record(0.0, 0.1 * concurrency, 0.1 * concurrency + 0.4, request.max_tokens) for request in requests]


def test_a_known_latency_curve_gives_the_exact_answer() -> None:
    engine = QueueingEngine()
    probe = workload_probe(engine, Workload(n_prompt=4, n_predict=5, requests=2, warmup=0), {"ttft_p99": 0.55})
    result = search(probe)
    assert result.found == 5 and result.max_concurrency == 4
    assert [t.level for t in result.trace] == [1, 2, 4, 8, 6, 5]
    assert result.trace[3].reason == "ttft_p99 0.8 > 0.55"
    oom = search(workload_probe(QueueingEngine(fail_above=3), Workload(n_prompt=4, n_predict=5, requests=2,
                                                                        warmup=0), {"ttft_p99": 10.0}))
    assert oom.found == 3 and "engine error: out of memory" in oom.trace[2].reason


def test_the_cache_is_verified_not_recalled(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLMPERF_CACHE_DIR", str(tmp_path))
    workload = Workload(n_prompt=4, n_predict=5, requests=2, warmup=0)
    kwargs: dict[str, Any] = {"start": 1, "limit": 64, "margin": 0.85, "gate": ("max_concurrency",)}
    first = QueueingEngine()
    result, part = calls.capacity(first, workload, {"ttft_p99": 0.55}, update=False, **kwargs)
    assert not result.cached and first.levels == [1, 2, 4, 8, 6, 5] and part.metrics["max_concurrency"] == 4.0
    assert part.reference == {"capacity": {"knob": "concurrency", "found": 5, "margin": 0.85}}
    # At the found level 5: 10 requests, all sent at 0 and done at 0.9 s, each with TTFT 0.5 s <= 0.55.
    assert part.metrics["goodput_req_s"] == pytest.approx(10 / 0.9)
    again = QueueingEngine()
    cached, part = calls.capacity(again, workload, {"ttft_p99": 0.55}, update=False, **kwargs)
    # The cached answer is where measuring starts, not the result: 5 must still pass and 6 still fail.
    assert cached.cached and again.levels == [5, 6] and cached.max_concurrency == 4
    assert "verified the cached answer 5 (the cache only speeds up recording" in part.warnings[0]
    assert part.metrics["goodput_req_s"] == pytest.approx(10 / 0.9)
    updated = QueueingEngine()
    calls.capacity(updated, workload, {"ttft_p99": 0.55}, update=True, **kwargs)
    assert updated.levels == [5, 6]  # --update-baselines measures too
    other_slo = QueueingEngine()
    calls.capacity(other_slo, workload, {"ttft_p99": 0.35}, update=False, **kwargs)
    assert other_slo.levels == [1, 2, 4, 3]  # a different SLO is a different answer: searched


def test_verify_measures_the_stored_answer_and_the_next_level() -> None:
    from pytest_llmperf.measure.capacity import verify

    same = verify(passes_up_to(5), 5, margin=1.0)
    assert [t.level for t in same.trace] == [5, 6] and same.found == 5 and same.stored == 5
    assert "verified the baseline's answer 5: 5 still meets the SLO and 6 does not" in same.describe()
    lower = verify(passes_up_to(3), 5, margin=1.0)
    assert [t.level for t in lower.trace] == [5, 2, 3, 4] and lower.found == 3 and lower.max_concurrency == 3
    assert "the baseline's answer 5 no longer meets the SLO (too slow): searched down to 3" in lower.describe()
    assert verify(passes_up_to(0), 5).found == 0  # down to nothing: even 1 fails now
    higher = verify(passes_up_to(9), 5, margin=1.0)
    assert [t.level for t in higher.trace] == [5, 6, 12, 9, 10] and higher.found == 9
    assert "6 meets the SLO above the baseline's answer 5: searched up to 9" in higher.describe()
    nothing = verify(passes_up_to(0), 0)
    assert [t.level for t in nothing.trace] == [1] and nothing.found == 0
    assert "verified the baseline's answer 0: 1 still fails the SLO" in nothing.describe()
    at_limit = verify(passes_up_to(100), 64, limit=48)  # the limit was lowered: nothing above it is tried
    assert [t.level for t in at_limit.trace] == [48] and at_limit.found == 48 and at_limit.limit_reached


def test_the_level_behind_a_recorded_max_concurrency() -> None:
    from pytest_llmperf.measure.capacity import stored_level

    assert stored_level(3.0, 0.85, 32) == 4  # floor(0.85 x 4) = 3; floor(0.85 x 5) = 4
    assert stored_level(5.0, 0.85, 64) == 7  # 6 and 7 both keep 5: the larger is verified (a fail searches down)
    assert stored_level(1.0, 0.85, 64) == 2
    assert stored_level(0.0, 0.85, 64) == 0
    assert stored_level(5.0, 1.0, 64) == 5
    assert stored_level(40.0, 0.85, 32) is None  # beyond the limit now: searched instead
    assert stored_level(2.5, 0.85, 32) is None
