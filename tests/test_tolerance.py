"""Tolerance parsing and direction-aware verdicts (pure core, no engine)."""

from __future__ import annotations

import pytest

from pytest_llmperf.core.baseline import MetricRecord
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable, parse_assignments, parse_tolerance
from pytest_llmperf.core.verdict import Verdict, judge
from pytest_llmperf.errors import LlmperfError


@pytest.mark.parametrize(
    ("text", "metric", "kind", "amount"),
    [
        ("5%", "completion_tok_s", "relative", 0.05),
        ("0.02", "arc_easy.acc", "absolute", 0.02),
        (0.02, "arc_easy.acc", "absolute", 0.02),
        ("20ms", "e2e_p99", "absolute", 0.020),
        ("1.5s", "ttft_p50", "absolute", 1.5),
        ("0.5GiB", "rss_peak_gib", "absolute", 0.5),
        ("512MiB", "mem_max_gib", "absolute", 0.5),
        ("2se", "arc_easy.acc", "stderr", 2.0),
    ],
)
def test_parse_tolerance(text: object, metric: str, kind: str, amount: float) -> None:
    tolerance = parse_tolerance(text, metric_spec(metric), "test")
    assert tolerance.kind == kind
    assert tolerance.amount == pytest.approx(amount)


@pytest.mark.parametrize(
    ("text", "metric", "message"),
    [
        ("fast", "completion_tok_s", "cannot parse tolerance 'fast'"),
        ("5 %%", "completion_tok_s", "cannot parse"),
        ("20ms", "completion_tok_s", "does not fit completion_tok_s"),
        ("1GiB", "e2e_p99", "does not fit e2e_p99"),
        (True, "e2e_p99", "must be a number"),
        ("2se", "e2e_p99", "only fits accuracy metrics"),
    ],
)
def test_bad_tolerance_names_value_and_source(text: object, metric: str, message: str) -> None:
    with pytest.raises(LlmperfError, match="ini llmperf_tolerances") as error:
        parse_tolerance(text, metric_spec(metric), "ini llmperf_tolerances")
    assert message in str(error.value)


def test_unknown_metric_and_pattern_are_rejected() -> None:
    with pytest.raises(LlmperfError, match="unknown metric 'throughput'"):
        ToleranceTable([("--llmperf-tolerance", {"throughput": "5%"})])
    with pytest.raises(LlmperfError, match="matches no metric"):
        ToleranceTable([("--llmperf-tolerance", {"latency_*": "5%"})])
    with pytest.raises(LlmperfError, match="expected 'metric = tolerance'"):
        parse_assignments(["completion_tok_s 5%"], "--llmperf-tolerance")


def test_most_specific_layer_and_pattern_win() -> None:
    table = ToleranceTable([("ini", {"*_tok_s": "10%", "completion_tok_s": "7%"}), ("default", DEFAULT_TOLERANCES)])
    assert table.for_metric("completion_tok_s").text == "7%"
    assert table.for_metric("prompt_tok_s").text == "10%"
    assert table.for_metric("e2e_p99").text == DEFAULT_TOLERANCES["e2e_*"]
    marker = table.with_layer("marker", {"*_tok_s": "50%"})
    assert marker.for_metric("completion_tok_s").text == "50%"


@pytest.mark.parametrize(
    ("metric", "baseline", "current", "verdict"),
    [
        ("completion_tok_s", 100.0, 94.0, Verdict.REGRESSED),  # higher is better: a drop fails
        ("completion_tok_s", 100.0, 96.0, Verdict.OK),
        ("completion_tok_s", 100.0, 120.0, Verdict.IMPROVED),  # a rise never fails
        ("e2e_p99", 1.00, 1.06, Verdict.REGRESSED),  # lower is better: a rise fails
        ("e2e_p99", 1.00, 0.80, Verdict.IMPROVED),
        ("e2e_p99", 1.00, 1.04, Verdict.OK),
    ],
)
def test_only_the_bad_direction_fails(metric: str, baseline: float, current: float, verdict: Verdict) -> None:
    tolerance = parse_tolerance("5%", metric_spec(metric), "test")
    assert judge(metric, MetricRecord(baseline), current, tolerance).verdict is verdict


def test_absolute_tolerance_and_new_and_unavailable() -> None:
    tolerance = parse_tolerance("0.02", metric_spec("arc_easy.acc"), "test")
    assert judge("arc_easy.acc", MetricRecord(0.50), 0.47, tolerance).verdict is Verdict.REGRESSED
    assert judge("arc_easy.acc", MetricRecord(0.50), 0.49, tolerance).verdict is Verdict.OK
    assert judge("arc_easy.acc", None, 0.49, tolerance).verdict is Verdict.NEW
    assert judge("arc_easy.acc", MetricRecord(0.5), None, tolerance).verdict is Verdict.UNAVAILABLE


def test_stderr_tolerance_uses_the_combined_standard_error() -> None:
    tolerance = parse_tolerance("2se", metric_spec("arc_easy.acc"), "test")
    baseline = MetricRecord(0.50, stderr=0.03)
    # Combined stderr hypot(0.03, 0.04) = 0.05: a drop of 0.09 is within 2 se (0.10), 0.11 is not.
    assert judge("arc_easy.acc", baseline, 0.41, tolerance, current_stderr=0.04).verdict is Verdict.OK
    assert judge("arc_easy.acc", baseline, 0.39, tolerance, current_stderr=0.04).verdict is Verdict.REGRESSED
    with pytest.raises(LlmperfError, match="'2se' is in standard errors, but"):
        judge("arc_easy.acc", MetricRecord(0.50), 0.39, tolerance, current_stderr=0.04)


def test_noise_rule_needs_the_whole_interval_beyond_the_tolerance() -> None:
    tolerance = parse_tolerance("5%", metric_spec("completion_tok_s"), "test")
    baseline = MetricRecord(100.0, [99.0, 100.0, 101.0])
    # Two of three repetitions hit by a neighbour: the median drops 10%, but the interval reaches back inside.
    interfered = judge("completion_tok_s", baseline, 90.0, tolerance, [60.0, 90.0, 100.5])
    assert interfered.verdict is Verdict.NOT_JUDGED and "not sure" in interfered.note and not interfered.sure
    # A real slowdown moves every repetition.
    slower = judge("completion_tok_s", baseline, 90.0, tolerance, [89.0, 90.0, 91.0])
    assert slower.verdict is Verdict.REGRESSED and slower.interval is not None and slower.interval.high < 0.95
    # Lower-is-better: the interval must lie wholly above 1 + tolerance.
    latency = MetricRecord(1.0, [0.99, 1.0, 1.01])
    assert judge("e2e_p99", latency, 1.2, tolerance, [1.0, 1.2, 1.3]).verdict is Verdict.NOT_JUDGED
    assert judge("e2e_p99", latency, 1.2, tolerance, [1.15, 1.2, 1.3]).verdict is Verdict.REGRESSED
    # Within tolerance but not sure of it: ok, and a longer measurement would be asked for (sure=False).
    unsure = judge("completion_tok_s", baseline, 99.0, tolerance, [80.0, 99.0, 120.0])
    assert unsure.verdict is Verdict.OK and not unsure.sure


def test_hand_edited_value_falls_back_to_the_point_rule() -> None:
    tolerance = parse_tolerance("5%", metric_spec("completion_tok_s"), "test")
    edited = MetricRecord(200.0, [99.0, 100.0, 101.0])  # value no longer the median of its samples
    assert judge("completion_tok_s", edited, 100.0, tolerance, [99.0, 100.0, 101.0]).verdict is Verdict.REGRESSED


def test_every_bad_tolerance_is_in_one_error_naming_its_key_and_value() -> None:
    with pytest.raises(LlmperfError) as error:
        ToleranceTable([("marker perf_tolerance on t.py::test_a",
                         {"completion_tok_s": "fast", "e2e_p99": "5%", "ttft_p99": "1GiB", "latency_*": "5%"})])
    lines = str(error.value).splitlines()
    assert lines[0] == "marker perf_tolerance on t.py::test_a: 3 bad tolerances:"
    assert lines[1].startswith("  completion_tok_s = 'fast': cannot parse tolerance 'fast' for completion_tok_s")
    assert lines[2].startswith("  ttft_p99 = '1GiB': tolerance '1GiB' has unit 'GiB', which does not fit ttft_p99")
    assert lines[3] == "  latency_* = '5%': tolerance pattern 'latency_*' matches no metric"
    with pytest.raises(LlmperfError) as error:  # two sources: each line names its own
        ToleranceTable([("--llmperf-tolerance", {"completion_tok_s": "fast"}), ("ini llmperf_tolerances",
                                                                                {"throughput": "5%"})])
    lines = str(error.value).splitlines()
    assert lines[0] == "2 bad tolerances:"
    assert lines[1].startswith("  --llmperf-tolerance: completion_tok_s = 'fast': cannot parse tolerance 'fast'")
    assert lines[2].startswith("  ini llmperf_tolerances: throughput = '5%': unknown metric 'throughput'")
    with pytest.raises(LlmperfError, match=r"^--llmperf-tolerance: cannot parse tolerance 'fast'"):  # one: as before
        ToleranceTable([("--llmperf-tolerance", {"completion_tok_s": "fast"})])


def test_a_marker_with_two_bad_values_reports_both(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marker="""
        import pytest

        @pytest.mark.perf
        @pytest.mark.perf_tolerance(completion_tok_s="fast", e2e_p99="1GiB")
        def test_marker(llmperf):
            llmperf.check({"completion_tok_s": 1.0})
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([
        "*marker perf_tolerance on test_marker.py::test_marker: 2 bad tolerances:",
        "*  completion_tok_s = 'fast': cannot parse tolerance 'fast'*",
        "*  e2e_p99 = '1GiB': tolerance '1GiB' has unit 'GiB', which does not fit e2e_p99*",
    ])
