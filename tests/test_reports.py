"""JSON and Markdown reports, $GITHUB_STEP_SUMMARY, and the summary under pytest-xdist."""

from __future__ import annotations

import json

import pytest

CHECKS = """
import pytest

@pytest.mark.perf
@pytest.mark.parametrize("value", [0.5, 0.9])
def test_latency(llmperf, value):
    llmperf.check({"e2e_p99": value, "completion_tok_s": 100.0})
"""


def _baseline(pytester: pytest.Pytester, param: str, e2e: float) -> None:
    path = pytester.path / f"baselines/test_checks/test_latency[{param}].json"
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {"e2e_p99": {"value": e2e}, "completion_tok_s": {"value": 100.0}}
    path.write_text(json.dumps({"schema": 1, "test": f"test_checks.py::test_latency[{param}]", "metrics": metrics}))


@pytest.mark.parametrize("workers", [[], ["-p", "no:xdist"], ["-n", "2"]])
def test_reports_and_summary(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]) -> None:
    pytester.makepyfile(test_checks=CHECKS)
    _baseline(pytester, "0.5", 0.5)  # unchanged: ok
    _baseline(pytester, "0.9", 0.5)  # +80% against a 40% tolerance: regressed
    summary = pytester.path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--llmperf-report", "out/report.json", *workers)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*= llmperf =*",
            "*test_checks.py::test_latency?0.5?*e2e_p99*0.5*0.5*+0.0*40%*ok*",
            "*test_checks.py::test_latency?0.9?*e2e_p99*0.5*0.9*+80.0*40%*regressed*",
        ]
    )

    report = json.loads((pytester.path / "out/report.json").read_text())
    assert report["schema"] == 1
    by_test = {entry["test"]: entry for entry in report["tests"]}
    assert set(by_test) == {"test_checks.py::test_latency[0.5]", "test_checks.py::test_latency[0.9]"}
    regressed = by_test["test_checks.py::test_latency[0.9]"]
    assert regressed["status"] == "regressed"
    e2e = next(m for m in regressed["metrics"] if m["metric"] == "e2e_p99")
    assert e2e["baseline"] == 0.5 and e2e["current"] == 0.9 and e2e["verdict"] == "regressed"
    assert e2e["delta_pct"] == pytest.approx(80.0)

    markdown = (pytester.path / "out/report.md").read_text()
    assert "| test_checks.py::test_latency[0.9] | e2e_p99 | 0.5 | 0.9 | +80.0 | 40% | **regressed** |" in markdown
    assert summary.read_text() == "earlier step\n" + markdown  # appended, not overwritten


def test_junit_properties(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_checks=CHECKS)
    result = pytester.runpytest(
        "-m",
        "perf",
        "-p",
        "no:cacheprovider",
        "-W",
        "ignore::pytest.PytestAssertRewriteWarning",
        "--junitxml=junit.xml",
    )
    result.assert_outcomes(passed=2, warnings=2)
    xml = (pytester.path / "junit.xml").read_text()
    assert '<property name="llmperf.e2e_p99" value="0.9"' in xml
    assert '<property name="llmperf.status" value="new"' in xml


def _report(path, values: dict[str, float | None]) -> None:
    metrics = [
        {
            "metric": name,
            "current": value,
            "baseline": None,
            "delta_pct": None,
            "verdict": "new",
            "tolerance": {"kind": "relative", "amount": 0.3, "text": "30%"},
        }
        for name, value in values.items()
    ]
    tests = [
        {
            "test": "t.py::test_a",
            "metrics": metrics,
            "status": "new",
            "message": "",
            "changes": [],
            "warnings": [],
            "baseline_path": "b.json",
        }
    ]
    path.write_text(json.dumps({"schema": 1, "tests": tests}))


def test_compare_command_names_a_bad_file(tmp_path, capsys) -> None:
    from pytest_llmperf.__main__ import main

    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["compare", str(tmp_path / "bad.json"), str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a pytest-llmperf JSON report" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]])
def test_stale_baselines_are_listed(pytester: pytest.Pytester, workers: list[str]) -> None:
    pytester.makepyfile(test_checks=CHECKS)
    _baseline(pytester, "0.5", 0.5)
    _baseline(pytester, "0.9", 0.9)
    stale = pytester.path / "baselines/test_checks/test_renamed.json"
    stale.write_text("{}")
    # -k selects one test; the other collected test's file is not stale, the renamed test's file is.
    result = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "-k", "0.5", *workers)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*stale baseline files (no collected test owns them): 1", f"*{stale}"])
    assert stale.exists()
    pruned = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--llmperf-prune-stale", *workers)
    pruned.stdout.fnmatch_lines(["*deleted (--llmperf-prune-stale)*"])
    assert not stale.exists()
    assert len(list((pytester.path / "baselines/test_checks").glob("*.json"))) == 2  # owned files stay


def test_fingerprint_hook_fields_are_stored_and_attributed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        """
        import os
        def pytest_llmperf_fingerprint(config, nodeid, fingerprint):
            fingerprint["cluster"] = os.environ["CLUSTER"]
        """
    )
    pytester.makepyfile(test_checks=CHECKS)
    args = ("-m", "perf", "-p", "no:cacheprovider", "-k", "0.5")
    monkeypatch.setenv("CLUSTER", "a100-pool")
    pytester.runpytest(*args, "--update-baselines").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / "baselines/test_checks/test_latency[0.5].json").read_text())
    assert stored["fingerprint"]["cluster"] == "a100-pool"
    monkeypatch.setenv("CLUSTER", "h100-pool")
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=1)  # a changed fingerprint alone does not fail
    result.stdout.fnmatch_lines(["*test_latency?0.5?: changed cluster a100-pool -> h100-pool*"])


def test_metrics_reach_pytest_benchmark_extra_info(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # When this suite itself runs under xdist, pytest-benchmark would take the in-process run for a worker
    # (it reads PYTEST_XDIST_WORKER) and leave the JSON to a controller that does not exist.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    pytester.makepyfile(
        test_bench="""
        import pytest

        @pytest.mark.perf
        def test_both(llmperf, benchmark):
            benchmark(lambda: None)
            llmperf.check({"e2e_p99": 0.25})
        """
    )
    result = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--benchmark-json=bench.json")
    result.assert_outcomes(passed=1)
    bench = json.loads((pytester.path / "bench.json").read_text())
    assert bench["benchmarks"][0]["extra_info"] == {"llmperf.e2e_p99": 0.25}


def test_tradeoff_table_puts_quality_beside_speed_and_memory() -> None:
    from pathlib import Path

    from pytest_llmperf.core.outcome import CheckOutcome, Status
    from pytest_llmperf.core.tolerance import Tolerance
    from pytest_llmperf.core.verdict import MetricComparison, Verdict
    from pytest_llmperf.reports.markdown import render_markdown
    from pytest_llmperf.reports.table import tradeoff_rows

    def outcome(test: str, values: dict[str, float]) -> CheckOutcome:
        tolerance = Tolerance("relative", 0.1, "10%")
        comparisons = [MetricComparison(name, value, value, tolerance, Verdict.OK) for name, value in values.items()]
        return CheckOutcome(test, Path("b.json"), Status.PASSED, comparisons, [], [], "")

    outcomes = [
        outcome("t::q4_0", {"completion_tok_s": 900.0, "rss_peak_gib": 0.01, "add.exact_match": 0.84,
                            "kl_mean": 0.002, "top1_agree": 0.97}),
        outcome("t::f16", {"completion_tok_s": 700.0, "rss_peak_gib": 0.02, "add.exact_match": 0.87,
                           "kl_mean": 0.0, "top1_agree": 1.0}),
        outcome("t::speed_only", {"completion_tok_s": 5.0}),
    ]
    rows = tradeoff_rows(outcomes)
    assert rows[0] == ("test", "completion_tok_s", "rss_peak_gib", "add.exact_match", "kl_mean", "top1_agree")
    assert [row[0] for row in rows[1:]] == ["t::f16", "t::q4_0"]  # speed-only tests are not trade-offs
    assert rows[2][1:] == ("900.0", "0.01", "0.84", "2.000e-03", "0.97")
    assert "### Trade-off (current values)" in render_markdown(outcomes)
