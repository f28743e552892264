"""Scaling curves: rows, per-concurrency metric names, tolerances, and the plugin's table and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmperf.core.metrics import metric_spec, split_concurrency
from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.scaling import check_concurrencies, scaling_rows


def test_rows_compute_speedup_and_efficiency_over_the_lowest_level() -> None:
    rows = scaling_rows({
        4: {"completion_tok_s": 300.0, "req_s": 3.0},
        2: {"completion_tok_s": 180.0, "req_s": 1.8},
        1: {"completion_tok_s": 100.0, "req_s": 1.0},
    })
    assert [row["concurrency"] for row in rows] == [1, 2, 4]
    assert [row["speedup"] for row in rows] == pytest.approx([1.0, 1.8, 3.0])
    assert [row["efficiency"] for row in rows] == pytest.approx([1.0, 0.9, 0.75])
    # Starting at 2, efficiency is relative to 2's throughput per unit of concurrency.
    rows = scaling_rows({2: {"completion_tok_s": 200.0}, 8: {"completion_tok_s": 400.0}})
    assert rows[1]["speedup"] == pytest.approx(2.0) and rows[1]["efficiency"] == pytest.approx(0.5)
    # No throughput at the base: nothing is invented.
    rows = scaling_rows({1: {"completion_tok_s": None}, 2: {"completion_tok_s": 5.0}})
    assert rows[1]["speedup"] is None and rows[1]["efficiency"] is None


def test_per_concurrency_names_take_the_base_metric_direction_and_tolerance() -> None:
    assert split_concurrency("e2e_p99@c16") == ("e2e_p99", 16)
    assert metric_spec("e2e_p99@c16").direction == "lower"
    assert metric_spec("completion_tok_s@c4").direction == "higher"
    assert metric_spec("efficiency@c4").direction == "higher"
    table = ToleranceTable([("defaults", DEFAULT_TOLERANCES)]).with_layer("marker", {"completion_tok_s": "7%"})
    assert str(table.for_metric("completion_tok_s@c8")) == "7%"
    assert str(table.with_layer("m2", {"completion_tok_s@c8": "9%"}).for_metric("completion_tok_s@c8")) == "9%"
    for bad in ("arc.acc@c2", "nonsense@c2", "completion_tok_s@c0"):
        with pytest.raises(LlmperfError):
            metric_spec(bad)
    for bad in ((), (1, 1), (0, 2), (1.5,)):
        with pytest.raises(LlmperfError, match="concurrencies"):
            check_concurrencies(bad)  # type: ignore[arg-type]


SCALING_TEST = """
import sys, pytest
from pytest_llmperf import Workload

@pytest.mark.perf
def test_curve(engine_factory, llmperf):
    engine = engine_factory("openai", launch=[sys.executable, {script!r}, "{{port}}", "ok"])
    scaling = llmperf.scaling(engine, Workload(n_prompt=4, n_predict=8, requests=4, repetitions=1),
                              concurrencies=(1, 2, 4), gate=("completion_tok_s", "e2e_p99", "efficiency"))
    assert scaling.efficiency(4) is not None
"""


def test_scaling_through_the_plugin_is_gated_tabulated_and_reported(pytester: pytest.Pytester) -> None:
    script = str(Path(__file__).with_name("scripted_server.py"))
    pytester.makepyfile(test_curve=SCALING_TEST.format(script=script))
    args = ["-m", "perf", "-p", "no:randomly", "--llmperf-baseline-dir", "b", "--llmperf-report", "r.json"]
    result = pytester.runpytest_subprocess(*args, "--update-baselines")
    result.assert_outcomes(passed=1)
    baseline = json.loads((pytester.path / "b" / "test_curve" / "test_curve.json").read_text())
    assert set(baseline["metrics"]) == {
        "completion_tok_s@c1", "completion_tok_s@c2", "completion_tok_s@c4",
        "e2e_p99@c1", "e2e_p99@c2", "e2e_p99@c4", "efficiency@c2", "efficiency@c4",
    }
    assert baseline["workload"]["concurrency"] == [1, 2, 4]
    output = result.stdout.str()
    assert "scaling (speedup" in output and "concurrency" in output and "efficiency" in output
    report = json.loads((pytester.path / "r.json").read_text())
    assert [row["concurrency"] for row in report["scaling"][0]["rows"]] == [1, 2, 4]
    assert "### Scaling: test_curve.py::test_curve" in (pytester.path / "r.md").read_text()
    # Too few requests to fill the top level is a named error, not a silent half-measurement.
    pytester.makepyfile(test_curve=SCALING_TEST.format(script=script).replace("requests=4", "requests=2"))
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*scaling up to concurrency 4 needs Workload.requests >= 4, got 2*"])
