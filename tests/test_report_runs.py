"""The report file survives a partial run: a run of the whole suite writes it afresh; a run of part of it (-k,
test ids, -m leaving perf tests out, --lf, a run stopped early) merges its tests into it, each entry naming its run;
a partial run that measured nothing leaves it as it was. ``compare`` reads a merged report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmperf.reports.compare import read_run
from pytest_llmperf.reports.files import partial_reasons
from pytest_llmperf.reports.json_report import load_report, merge_reports, stamp_run

TESTS = """
import pytest

@pytest.mark.perf
def test_a(llmperf):
    llmperf.check({"e2e_p99": 0.5})

@pytest.mark.perf
@pytest.mark.slow
def test_b(llmperf):
    llmperf.check({"e2e_p99": 0.25})
"""
REPORT = "--llmperf-report=out/llmperf.json"


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", REPORT, *args)


def _report(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "out/llmperf.json").read_text())


def _runs_of(report: dict) -> dict[str, str]:
    return {entry["test"]: entry["run"] for entry in report["tests"]}


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nmarkers =\n    slow: a slow test\n")
    pytester.makepyfile(test_suite=TESTS)
    return pytester


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]])
def test_a_partial_run_merges_into_the_whole_runs_report(suite: pytest.Pytester, workers: list[str]) -> None:
    _run(suite, "-m", "perf", *workers).assert_outcomes(passed=2, warnings=2)
    whole = _report(suite)
    (first,) = whole["runs"]
    assert whole["runs"][first]["partial"] == [] and whole["runs"][first]["tests"] == 2
    assert set(_runs_of(whole).values()) == {first}

    # -m leaves test_b out: only test_a's entry is replaced; test_b's stays, naming the first run.
    result = _run(suite, "-m", "perf and not slow", *workers)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*report out/llmperf.json: this run covered part of the suite (1 perf test "
                                 "deselected by -m 'perf and not slow'), so its tests were merged*"])
    merged = _report(suite)
    runs = _runs_of(merged)
    assert set(runs) == {"test_suite.py::test_a", "test_suite.py::test_b"}
    assert runs["test_suite.py::test_b"] == first and runs["test_suite.py::test_a"] != first
    second = runs["test_suite.py::test_a"]
    assert merged["runs"][second]["partial"] == ["1 perf test deselected by -m 'perf and not slow'"]
    assert merged["runs"][first]["tests"] == merged["runs"][second]["tests"] == 1
    markdown = (suite.path / "out/llmperf.md").read_text()
    assert "test_suite.py::test_b" in markdown and "## Runs" in markdown
    assert f"| {second} (this run) | part of the suite: 1 perf test deselected" in markdown

    # compare reads the merged report like any other.
    assert set(load_report(suite.path / "out/llmperf.json")) == {("test_suite.py::test_a", "e2e_p99"),
                                                                 ("test_suite.py::test_b", "e2e_p99")}
    read_run(suite.path / "out/llmperf.json", "merged")

    # The whole suite again: the report is written afresh, one run.
    _run(suite, "-m", "perf", *workers).assert_outcomes(passed=2)
    again = _report(suite)
    assert len(again["runs"]) == 1 and len(set(_runs_of(again).values())) == 1
    assert "## Runs" not in (suite.path / "out/llmperf.md").read_text()


def test_an_update_of_one_test_by_its_id_keeps_the_others(suite: pytest.Pytester) -> None:
    _run(suite, "-m", "perf").assert_outcomes(passed=2, warnings=2)
    before = _report(suite)
    _run(suite, "-m", "perf", "--update-baselines", "test_suite.py::test_b").assert_outcomes(passed=1)
    after = _report(suite)
    assert _runs_of(after)["test_suite.py::test_a"] == _runs_of(before)["test_suite.py::test_a"]
    assert _runs_of(after)["test_suite.py::test_b"] != _runs_of(before)["test_suite.py::test_b"]
    status = {entry["test"]: entry["status"] for entry in after["tests"]}
    assert status == {"test_suite.py::test_a": "new", "test_suite.py::test_b": "updated"}


def test_a_partial_run_that_measured_nothing_leaves_the_report_alone(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_other="def test_plain():\n    pass\n")
    _run(suite, "-m", "perf").assert_outcomes(passed=2, warnings=2)
    before = (suite.path / "out/llmperf.json").read_text()
    _run(suite, "test_other.py").assert_outcomes(passed=1)  # (a run of the unit tests, say)
    _run(suite, "-m", "perf", "-k", "no_such_test").assert_outcomes()
    _run(suite, "-m", "perf", "--collect-only")
    assert (suite.path / "out/llmperf.json").read_text() == before


def test_a_run_stopped_early_merges(suite: pytest.Pytester) -> None:
    _run(suite, "-m", "perf").assert_outcomes(passed=2, warnings=2)
    suite.makepyfile(test_suite=TESTS.replace('0.5})', '0.5})\n    assert False'))
    _run(suite, "-m", "perf", "-x", "-p", "no:randomly").assert_outcomes(failed=1)
    report = _report(suite)
    assert len(report["tests"]) == 2
    (reasons,) = [run["partial"] for run in report["runs"].values() if run["partial"]]
    assert reasons == ["stopped early (stopping after 1 failures)"]


def test_partial_reasons(tmp_path: Path) -> None:
    root = tmp_path
    (root / "perf_tests").mkdir()

    def reasons(args: list[str], options: dict[str, object] | None = None, **rest: object) -> list[str]:
        return partial_reasons(args, root, root, ["perf_tests"], options or {}, **rest)  # type: ignore[arg-type]

    assert reasons(["perf_tests"]) == []  # the main job: testpaths
    assert reasons(["."]) == []  # a folder above the suite holds all of it
    assert reasons([str(root / "perf_tests")]) == []
    assert reasons(["perf_tests/test_x.py"]) == ["paths on the command line (perf_tests/test_x.py)"]
    assert reasons(["tests"]) == ["paths on the command line (tests)"]
    assert reasons(["perf_tests/x.py::test_a", "perf_tests/x.py::test_b"]) == [
        "tests named on the command line (perf_tests/x.py::test_a, perf_tests/x.py::test_b)"]
    assert reasons(["perf_tests"], {"-k": "decode", "--lf": True, "--sw": False}) == ["-k 'decode'", "--lf"]
    assert reasons(["perf_tests"], deselected_perf=3, markexpr="perf and not gpu") == [
        "3 perf tests deselected by -m 'perf and not gpu'"]
    assert reasons(["perf_tests"], stopped="interrupted") == ["stopped early (interrupted)"]
    assert partial_reasons([str(root)], root, root, [], {}) == []  # no testpaths: the rootdir is the suite


def test_merge_keeps_what_the_partial_run_did_not_measure() -> None:
    earlier = {"schema": 1, "tests": [{"test": "t::a", "v": 1}, {"test": "t::b", "v": 1}],  # (no "run": older report)
               "studies": [{"study": "s", "v": 1}]}
    current = stamp_run({"schema": 1, "tests": [{"test": "t::b", "v": 2}]}, "R2", ["-k 'b'"], finished="R2")
    merged = merge_reports(earlier, current)
    assert merged["tests"] == [{"test": "t::a", "v": 1, "run": "not recorded"}, {"test": "t::b", "v": 2, "run": "R2"}]
    assert merged["studies"] == [{"study": "s", "v": 1, "run": "not recorded"}]
    assert merged["runs"] == {"not recorded": {"finished": None, "partial": None, "tests": 1},
                              "R2": {"finished": "R2", "partial": ["-k 'b'"], "tests": 1}}
    # A run whose every entry was measured again leaves the report.
    third = stamp_run({"schema": 1, "tests": [{"test": "t::b", "v": 3}]}, "R3", ["-k 'b'"], finished="R3")
    assert set(merge_reports(merged, third)["runs"]) == {"not recorded", "R3"}


def test_a_run_that_cannot_finish_writing_leaves_the_earlier_report_whole(suite: pytest.Pytester,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The report is written atomically: when the write fails part-way (here the disk refuses to sync), the main
    job's report is still there, byte for byte, and the session says why nothing new was written."""
    _run(suite, "-m", "perf", "-p", "no:xdist").assert_outcomes(passed=2, warnings=2)
    before = (suite.path / "out/llmperf.json").read_bytes()

    def full_disk(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    result = _run(suite, "-m", "perf and not slow", "-p", "no:xdist")
    result.stdout.fnmatch_lines(["*cannot write the llmperf report */out/llmperf.json: *No space left on device*"])
    assert (suite.path / "out/llmperf.json").read_bytes() == before
    assert not list((suite.path / "out").glob(".*.tmp"))
