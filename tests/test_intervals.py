"""The distribution-free intervals behind the verdicts (``core/intervals.py``), the interval verdict rule, the
disturbance rule and measure-until-sure's stopping rule: plain Python, no engine."""

from __future__ import annotations

import random
import statistics

import pytest

from pytest_llmperf.core.baseline import Baseline, MetricRecord
from pytest_llmperf.core.disturbance import busy_reason, disturbance, disturbed_share, summary
from pytest_llmperf.core.intervals import median_interval, paired_interval, shift_interval
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.stopping import metric_is_sure, precise, stop_rule
from pytest_llmperf.core.tolerance import parse_tolerance
from pytest_llmperf.core.verdict import Verdict, judge

FIVE = parse_tolerance("5%", metric_spec("completion_tok_s"), "test")


def noisy(centre: float, n: int, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [centre * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


def test_median_interval_needs_six_samples_at_95_percent() -> None:
    assert median_interval([1, 2, 3, 4, 5]) is None
    interval = median_interval([5, 1, 4, 2, 6, 3])
    assert interval is not None and (interval.low, interval.estimate, interval.high) == (1, 3.5, 6)
    wide = median_interval(list(range(1, 101)))
    assert wide is not None and 38 <= wide.low < 50.5 < wide.high <= 63  # the binomial ranks for n=100


def test_median_interval_covers_the_true_median_at_its_level() -> None:
    rng = random.Random(1)
    covered = sum(
        interval.low <= 0.0 <= interval.high
        for _ in range(2000)
        if (interval := median_interval([rng.gauss(0, 1) for _ in range(15)])) is not None
    )
    assert 0.94 <= covered / 2000 <= 0.995  # at least 95%, conservative (discrete ranks)


def test_shift_interval_is_the_ratio_of_a_scaled_sample() -> None:
    base = noisy(100, 20, 0.05, 2)
    interval = shift_interval(base, [x * 0.9 for x in base])
    assert interval is not None and interval.estimate == pytest.approx(0.9)
    assert interval.low < 0.9 < interval.high
    assert shift_interval([1.0], [1.0, 2.0]) is None
    assert shift_interval([0.0, 1.0], [1.0, 2.0]) is None  # a ratio needs positive values
    difference = shift_interval([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], 0.90, relative=False)
    assert difference is not None and difference.estimate == pytest.approx(1.0)
    assert difference.level == pytest.approx(0.9)  # 3 a side: [min, max] of the 9 differences covers 18 in 20
    # ... and no 95% interval: the old normal approximation claimed one (the same [min, max], really 90%).
    assert shift_interval([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], 0.95, relative=False) is None


def test_paired_interval_removes_drift_shared_by_both_sides() -> None:
    drift = [100 + 50 * (i % 7) for i in range(30)]  # the machine's speed swings 4x between pairs
    a = drift
    b = [x * 0.95 for x in drift]
    interval = paired_interval(a, b)
    assert interval is not None and interval.estimate == pytest.approx(0.95) and interval.high < 1
    assert shift_interval(a, b) is not None and shift_interval(a, b).high > 1  # unpaired: the drift hides it


def test_a_regression_needs_the_whole_interval_beyond_the_tolerance() -> None:
    base = noisy(100, 30, 0.02, 3)
    record = MetricRecord(statistics.median(base), base)
    slow = noisy(88, 30, 0.02, 4)
    comparison = judge("completion_tok_s", record, statistics.median(slow), FIVE, slow)
    assert comparison.verdict is Verdict.REGRESSED and comparison.interval is not None
    assert comparison.interval.high < 0.95
    assert "ratio 0.879 [0.874, 0.883]" in comparison.describe()

    same = noisy(100, 30, 0.02, 5)
    ok = judge("completion_tok_s", record, statistics.median(same), FIVE, same)
    assert ok.verdict is Verdict.OK and ok.sure


def test_a_median_beyond_tolerance_with_an_interval_back_inside_is_not_judged() -> None:
    base = noisy(100, 6, 0.30, 6)
    record = MetricRecord(statistics.median(base), base)
    current = [x * 0.93 for x in noisy(100, 6, 0.30, 7)]
    comparison = judge("completion_tok_s", record, statistics.median(current), FIVE, current)
    if comparison.delta_pct is not None and comparison.delta_pct < -5:
        assert comparison.verdict is Verdict.NOT_JUDGED and not comparison.sure
        assert "not sure" in comparison.note
    else:
        assert comparison.verdict is Verdict.OK and not comparison.sure


def test_latency_regresses_upwards() -> None:
    tolerance = parse_tolerance("10%", metric_spec("e2e_p99"), "test")
    base = noisy(1.0, 20, 0.02, 8)
    record = MetricRecord(statistics.median(base), base)
    slower = noisy(1.3, 20, 0.02, 9)
    assert judge("e2e_p99", record, statistics.median(slower), tolerance, slower).verdict is Verdict.REGRESSED
    faster = noisy(0.7, 20, 0.02, 10)
    assert judge("e2e_p99", record, statistics.median(faster), tolerance, faster).verdict is Verdict.IMPROVED


def test_disturbance_is_relative_to_the_baselines_quality() -> None:
    quiet = {"runqueue_wait": 0.0, "others_cores": 0.02, "steal_pct": 0.0, "machine_speed": 300.0}
    assert disturbance(quiet) is None
    neighbour = {**quiet, "others_cores": 1.0}
    assert "other processes used 1.0 cores" in (disturbance(neighbour) or "")
    assert disturbance(neighbour, reference={"others_cores": 0.95}) is None  # recorded beside it too
    preempted = {**quiet, "runqueue_wait": 0.4}
    assert "waited for a core 40%" in (disturbance(preempted) or "")
    server = {**quiet, "runqueue_wait": 0.09}  # a server and its client share the cores: not a disturbance
    assert disturbance(server, reference={"runqueue_wait": 0.08}) is None
    slow_host = {**quiet, "machine_speed": 200.0}
    assert disturbance(slow_host) is None  # no reference: nothing to compare the host's speed with
    assert "33% slower" in (disturbance(slow_host, reference={"machine_speed": 300.0}) or "")
    assert disturbed_share([quiet, neighbour, neighbour, quiet]) == 0.5
    assert summary([quiet, neighbour])["others_cores"] == pytest.approx(0.51)
    assert busy_reason([neighbour, quiet]).startswith("machine busy (")
    assert "1 of 2 repetitions disturbed" in busy_reason([neighbour, quiet])


def test_stop_rule_without_a_baseline_wants_a_precise_median() -> None:
    assert not precise([100, 101, 99], FIVE)  # too few for an interval
    assert precise(noisy(100, 12, 0.01, 11), FIVE)
    assert not precise(noisy(100, 12, 0.40, 12), FIVE)
    rule = stop_rule(["completion_tok_s"], {"completion_tok_s": FIVE}, None)
    assert rule({"completion_tok_s": noisy(100, 12, 0.01, 13)})
    assert not rule({"completion_tok_s": noisy(100, 12, 0.40, 14)})
    assert rule({"completion_tok_s": []})  # unavailable: more repetitions will not measure it


def test_stop_rule_with_a_baseline_stops_when_the_verdict_is_sure() -> None:
    base = noisy(100, 30, 0.02, 15)
    baseline = Baseline("t", {"decode.completion_tok_s": MetricRecord(statistics.median(base), base)})
    rule = stop_rule(["completion_tok_s"], {"decode.completion_tok_s": FIVE}, baseline, prefix="decode")
    assert rule({"completion_tok_s": noisy(100, 8, 0.02, 16)})  # clearly within
    assert rule({"completion_tok_s": noisy(80, 8, 0.02, 17)})  # clearly beyond
    assert not rule({"completion_tok_s": noisy(95, 8, 0.05, 18)})  # at the limit: measure on
    assert metric_is_sure("decode.completion_tok_s", noisy(100, 8, 0.02, 19), FIVE, baseline)


def test_cpu_samples_are_compared_at_the_baselines_machine_speed() -> None:
    base = noisy(100, 20, 0.02, 20)
    record = MetricRecord(statistics.median(base), base, speeds=[10.0] * 20)
    # The whole machine ran 30% slower (the reference loop too): no repetition at the baseline's speed.
    slow_host = [x * 0.7 for x in noisy(100, 20, 0.02, 21)]
    comparison = judge("completion_tok_s", record, statistics.median(slow_host), FIVE, slow_host,
                       current_speeds=[7.0] * 20)
    assert comparison.verdict is Verdict.NOT_JUDGED and "only 0 of 20 repetitions" in comparison.note
    assert "30% slower" in comparison.note
    # Half the repetitions at the baseline's speed, half on a slow host: judged on the matching half.
    mixed = noisy(100, 10, 0.02, 22) + [x * 0.7 for x in noisy(100, 10, 0.02, 23)]
    ok = judge("completion_tok_s", record, statistics.median(mixed), FIVE, mixed,
               current_speeds=[10.1] * 10 + [7.0] * 10)
    assert ok.verdict is Verdict.OK and ok.adjusted and "machine-adjusted ratio" in ok.describe()
    # A real 12% slowdown at the baseline's machine speed is caught; adjusting for a 3% slower loop keeps it.
    slower = [x * 0.88 for x in noisy(100, 20, 0.02, 24)]
    caught = judge("completion_tok_s", record, statistics.median(slower), FIVE, slower,
                   current_speeds=[9.7] * 20)
    assert caught.verdict is Verdict.REGRESSED and caught.interval is not None
    assert caught.interval.estimate == pytest.approx(0.88 / 0.97, rel=0.03)
    # Memory does not scale with the machine's speed: compared as it is.
    memory = MetricRecord(1.0, [1.0] * 5, speeds=[10.0] * 5)
    assert judge("rss_peak_gib", memory, 1.0, FIVE, [1.0] * 5, current_speeds=[5.0] * 5).verdict is Verdict.OK
