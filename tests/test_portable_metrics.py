"""Portable metrics (issue 25, item 2): what does not depend on the machine's speed is judged against the
baseline entry of any hardware class with the same backend; speed stays per class ("not comparable", with the
command that records this class). Also: a gated metric missing from the run is never a silent pass, and a
rewrite that drops one says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.outcome import Measurement, Status, check_measurement, consequence
from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable
from pytest_llmperf.core.verdict import Verdict

TEST = "perf_tests/test_x.py::test_x"
TABLE = ToleranceTable([("built-in default", DEFAULT_TOLERANCES)])


def fingerprint(hardware: str, backend: str = "llama_cpp") -> dict[str, Any]:
    return {"backend": backend, "hardware": {"class": hardware}, "versions": {"llama-cpp-python": "0.3.36"}}


def write_baseline(directory: Path, metrics: dict[str, float], hardware: str = "cpu:Recorded:2",
                   backend: str = "llama_cpp") -> Path:
    path = directory / "perf_tests/test_x/test_x.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "schema": 1, "test": TEST, "fingerprint": fingerprint(hardware, backend), "workload": {},
        "metrics": {name: {"value": value} for name, value in metrics.items()},
    }))
    return path


def measured(metrics: dict[str, float | None], hardware: str = "cpu:Elsewhere:2") -> Measurement:
    return Measurement(TEST, metrics, {}, fingerprint(hardware), {})


STORED = {"completion_tok_s": 300.0, "engine_mem_gib": 0.05, "arc.acc": 0.5, "kl_mean": 1e-6}


@pytest.mark.parametrize("name", ["arc.acc", "top1_agree", "kv_cache_gib_measured", "engine_mem_gib",
                                  "decode.engine_kv_gib", "kv_cache_gib_measured@c4"])
def test_the_metric_table_says_what_is_portable(name: str) -> None:
    assert metric_spec(name).portable


@pytest.mark.parametrize("name", ["completion_tok_s", "ttft_p99", "rss_peak_gib", "mem_max_gib", "tg_tok_s",
                                  "max_concurrency", "decode.completion_tok_s"])
def test_speed_and_host_memory_are_not_portable(name: str) -> None:
    assert not metric_spec(name).portable


def test_another_class_judges_the_portable_metrics_and_lists_speed_as_not_comparable(tmp_path: Path) -> None:
    write_baseline(tmp_path, STORED)
    outcome = check_measurement(measured(dict(STORED)), tmp_path, TABLE, update=False)
    verdicts = {c.metric: c.verdict for c in outcome.comparisons}
    assert verdicts == {"arc.acc": Verdict.OK, "engine_mem_gib": Verdict.OK, "kl_mean": Verdict.OK,
                        "completion_tok_s": Verdict.NOT_COMPARABLE}
    assert outcome.status is Status.PASSED
    judged = next(c for c in outcome.comparisons if c.metric == "arc.acc")
    assert judged.note == "judged against the entry recorded on 'cpu:Recorded:2': portable metric"
    speed = next(c for c in outcome.comparisons if c.metric == "completion_tok_s")
    assert "pytest -m perf --update-baselines perf_tests/test_x.py::test_x" in speed.note
    local = consequence(outcome, strict=False)
    assert local.fail is None and local.skip is None
    assert any("completion_tok_s not comparable" in warning for warning in local.warnings)
    strict = consequence(outcome, strict=True)
    assert strict.fail is not None and "completion_tok_s not comparable" in strict.fail


@pytest.mark.parametrize(("metric", "worse"), [("engine_mem_gib", 0.06), ("kl_mean", 1e-3), ("arc.acc", 0.3)])
def test_a_portable_regression_fails_on_a_class_without_a_speed_baseline(
        tmp_path: Path, metric: str, worse: float) -> None:
    write_baseline(tmp_path, STORED)
    outcome = check_measurement(measured({**STORED, metric: worse}), tmp_path, TABLE, update=False)
    assert outcome.status is Status.REGRESSED
    assert [c.metric for c in outcome.regressions] == [metric]
    assert consequence(outcome, strict=False).fail is not None


def test_an_entry_of_another_backend_is_not_used(tmp_path: Path) -> None:
    write_baseline(tmp_path, STORED, backend="openai")
    outcome = check_measurement(measured({**STORED, "arc.acc": 0.1}), tmp_path, TABLE, update=False)
    assert outcome.status is Status.NOT_COMPARABLE
    assert consequence(outcome, strict=False).skip is not None


def test_only_speed_metrics_on_another_class_stay_not_comparable(tmp_path: Path) -> None:
    write_baseline(tmp_path, {"completion_tok_s": 300.0})
    outcome = check_measurement(measured({"completion_tok_s": 30.0}), tmp_path, TABLE, update=False)
    assert outcome.status is Status.NOT_COMPARABLE


def test_a_gated_metric_missing_from_the_run_is_not_a_pass(tmp_path: Path) -> None:
    write_baseline(tmp_path, STORED, hardware="cpu:Here:2")
    without = {name: value for name, value in STORED.items() if name != "engine_mem_gib"}
    outcome = check_measurement(measured(without, "cpu:Here:2"), tmp_path, TABLE, update=False)
    missing = next(c for c in outcome.comparisons if c.metric == "engine_mem_gib")
    assert missing.verdict is Verdict.UNAVAILABLE
    assert "in the baseline but this run did not measure it" in outcome.describe_unjudged()
    assert consequence(outcome, strict=True).fail is not None
    assert any("engine_mem_gib is in the baseline" in w for w in consequence(outcome, strict=False).warnings)


def test_a_rewrite_that_drops_a_metric_says_so(tmp_path: Path) -> None:
    write_baseline(tmp_path, STORED, hardware="cpu:Here:2")
    without = {name: value for name, value in STORED.items() if name != "kl_mean"}
    outcome = check_measurement(measured(without, "cpu:Here:2"), tmp_path, TABLE, update=True)
    assert outcome.pending is not None and "kl_mean" not in outcome.pending.metrics
    assert any("kl_mean is in the baseline entry for 'cpu:Here:2' but not measured" in a for a in outcome.alerts)


def test_the_entry_recorded_with_this_workload_is_preferred(tmp_path: Path) -> None:
    """Two other classes: one recorded on 400 questions (an older workload), one on this run's 200. The portable
    metric is judged against the one with this workload, not whichever comes first in the file."""
    entry = {"test": TEST, "metrics": {"arc.acc": {"value": 0.6}}}
    path = tmp_path / "perf_tests/test_x/test_x.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "schema": 1, "test": TEST, "fingerprint": fingerprint("cpu:Old:2"), "workload": {"limit": 400},
        "metrics": {"arc.acc": {"value": 0.7}},
        "other_hardware": {"cpu:New:2": {**entry, "fingerprint": fingerprint("cpu:New:2"), "workload": {"limit": 200}}},
    }))
    now = Measurement(TEST, {"arc.acc": 0.6}, {}, fingerprint("cpu:Elsewhere:2"), {"limit": 200})
    outcome = check_measurement(now, tmp_path, TABLE, update=False)
    (judged,) = outcome.comparisons
    assert judged.verdict is Verdict.OK and judged.baseline == 0.6
    assert judged.note == "judged against the entry recorded on 'cpu:New:2': portable metric"
