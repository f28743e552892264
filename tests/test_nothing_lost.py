"""Nothing on disk is lost (issue 12, items 1-5 and 12): stale pruning, failing updates, files this version
cannot fully read, report paths, temp files, unwritable places. Each test failed before its fix."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from pytest_llmperf.core.baseline import Baseline, MetricRecord, load_baseline, record_baseline
from pytest_llmperf.errors import BaselineError

TWO_TESTS = """
import os
import pytest

@pytest.mark.perf
def test_a(llmperf):
    llmperf.check({"e2e_p99": float(os.environ.get("VALUE", "1.0"))})
    assert os.environ.get("FAIL") != "1", "the test's own assert"
    if os.environ.get("RAISE") == "1":
        raise RuntimeError("an error after the check")

@pytest.mark.perf
def test_b(llmperf):
    llmperf.check({"e2e_p99": 2.0})
"""
A = "baselines/test_two/test_a.json"
B = "baselines/test_two/test_b.json"


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", *args)


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_two=TWO_TESTS)
    run(pytester, "--update-baselines").assert_outcomes(passed=2)
    assert (pytester.path / A).exists() and (pytester.path / B).exists()
    return pytester


def _value(path: Path) -> float:
    return float(json.loads(path.read_text())["metrics"]["e2e_p99"]["value"])


# --- 1. a selection never makes a file stale ---------------------------------------------------------------


@pytest.mark.parametrize("selection", ["test_two.py::test_a", "test_two.py::test_b"])
def test_selecting_tests_by_node_id_prunes_nothing(recorded: pytest.Pytester, selection: str) -> None:
    # The form the plugin's own accept command prints.
    result = run(recorded, "--update-baselines", "--llmperf-prune-stale", selection)
    result.assert_outcomes(passed=1)
    assert (recorded.path / A).exists() and (recorded.path / B).exists()
    assert "stale baseline files" not in result.stdout.str()


def test_last_failed_prunes_nothing(recorded: pytest.Pytester) -> None:
    pytester = recorded
    pytester.makepyfile(test_two=TWO_TESTS.replace('"e2e_p99": 2.0', '"e2e_p99": 20.0'))
    pytester.runpytest("-m", "perf").assert_outcomes(passed=1, failed=1)  # test_b regressed
    result = pytester.runpytest("-m", "perf", "--lf", "--llmperf-prune-stale")
    result.assert_outcomes(failed=1)  # only test_b ran
    assert (pytester.path / A).exists()
    assert "stale baseline files" not in result.stdout.str()


def test_a_whole_module_still_finds_and_prunes_what_is_really_gone(recorded: pytest.Pytester) -> None:
    recorded.makepyfile(test_two=TWO_TESTS.split("@pytest.mark.perf\ndef test_b")[0])
    result = run(recorded, "--llmperf-prune-stale", "test_two.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*stale baseline files (no collected test owns them): 1*", "*test_b.json*"])
    assert (recorded.path / A).exists() and not (recorded.path / B).exists()


# --- 2. only a passing test rewrites its baseline ------------------------------------------------------------


@pytest.mark.parametrize("failure", ["FAIL", "RAISE"])
def test_a_failing_test_does_not_rewrite_its_baseline(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    before = (recorded.path / A).read_text()
    monkeypatch.setenv("VALUE", "32.6")
    monkeypatch.setenv(failure, "1")
    result = run(recorded, "--update-baselines")
    result.assert_outcomes(passed=1, failed=1)
    assert (recorded.path / A).read_text() == before
    result.stdout.fnmatch_lines(["*test_two.py::test_a*e2e_p99*not written*"])
    result.stdout.fnmatch_lines(["*baseline not written, the test failed*test_a.json is as it was*"])
    monkeypatch.delenv(failure)
    run(recorded, "--update-baselines").assert_outcomes(passed=2)
    assert _value(recorded.path / A) == 32.6  # once it passes, it writes


# --- 3. --update-baselines keeps what it cannot read ---------------------------------------------------------


def _entry(value: float = 1.0, hardware: str = "cpu:A:2") -> Baseline:
    return Baseline("t.py::test", {"e2e_p99": MetricRecord(value, [value])}, {"hardware": {"class": hardware}})


def test_update_keeps_an_other_hardware_entry_it_cannot_validate(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    record_baseline(path, _entry())
    data = json.loads(path.read_text())
    future = {"metrics": {"tokens_per_joule": {"value": 3.0}}, "fingerprint": {"hardware": {"class": "gpu:H100:1"}}}
    data["other_hardware"] = {"gpu:H100:1": future}
    data["written_by"] = "pytest-llmperf 9.0"
    path.write_text(json.dumps(data))

    record_baseline(path, _entry(5.0))
    after = json.loads(path.read_text())
    assert after["other_hardware"]["gpu:H100:1"] == future  # kept as it was, unknown metric and all
    assert after["written_by"] == "pytest-llmperf 9.0"  # unknown top-level keys too
    assert after["metrics"]["e2e_p99"]["value"] == 5.0  # only this machine's entry was rewritten
    loaded = load_baseline(path)
    assert loaded is not None and loaded.for_hardware("cpu:A:2") is not None
    with pytest.raises(BaselineError, match=r"other_hardware\['gpu:H100:1'\].*unknown metric 'tokens_per_joule'"):
        loaded.for_hardware("gpu:H100:1")  # an error only for the machine whose entry it is


def test_update_of_a_nested_entry_keeps_the_top_level_one(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    record_baseline(path, _entry(1.0, "gpu:H100:1"))
    record_baseline(path, _entry(2.0, "cpu:A:2"))
    record_baseline(path, _entry(3.0, "cpu:A:2"))
    loaded = load_baseline(path)
    assert loaded is not None
    assert loaded.for_hardware("gpu:H100:1").metrics["e2e_p99"].value == 1.0  # type: ignore[union-attr]
    assert loaded.for_hardware("cpu:A:2").metrics["e2e_p99"].value == 3.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": 2, "test": "t.py::test", "metrics": {}}', "schema 2; this pytest-llmperf writes schema 1"),
        ('{"schema": 1, "test": "t.py::test", "metrics": {', "malformed JSON at line 1"),
        ('{"schema": 1, "test": "t.py::other", "metrics": {}}', "holds the baseline of test 't.py::other'"),
        ("[1, 2]", "not a baseline"),
    ],
)
def test_update_refuses_a_file_it_would_lose_naming_it(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(BaselineError) as refused:
        record_baseline(path, _entry())
    assert str(path) in str(refused.value) and message in str(refused.value)
    assert path.read_text() == content


def test_update_of_another_schema_fails_the_test_and_keeps_the_file(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO_TESTS)
    path = pytester.path / A
    path.parent.mkdir(parents=True)
    future = '{"schema": 2, "test": "test_two.py::test_a", "entries": [1, 2, 3]}'
    path.write_text(future)
    result = run(pytester, "--update-baselines", "test_two.py::test_a")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{path}: schema 2; this pytest-llmperf writes schema 1*would discard*"])
    assert path.read_text() == future
    assert "Traceback" not in result.stdout.str()


# --- 4. the Markdown report never overwrites the JSON one -----------------------------------------------------


@pytest.mark.parametrize(("given", "json_name", "markdown_name"), [
    ("out/report.md", "out/report.json", "out/report.md"),
    ("out/report.json", "out/report.json", "out/report.md"),
    ("out/report", "out/report", "out/report.md"),
])
def test_report_paths_never_collide(recorded: pytest.Pytester, given: str, json_name: str, markdown_name: str) -> None:
    run(recorded, "--llmperf-report", given).assert_outcomes(passed=2)
    report = json.loads((recorded.path / json_name).read_text())
    assert {test["test"] for test in report["tests"]} == {"test_two.py::test_a", "test_two.py::test_b"}
    assert (recorded.path / markdown_name).read_text().startswith("## pytest-llmperf")


# --- 5. temp files of killed writes are cleaned up ------------------------------------------------------------


def test_the_next_write_removes_temp_files_of_killed_writes(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    record_baseline(path, _entry())
    # What a write killed between creating its temp file and renaming it leaves behind.
    left_over = [tmp_path / ".t.json.k1l2e3d.tmp", tmp_path / ".other.json.x9y8z7.tmp"]
    for leftover in left_over:
        leftover.write_text('{"partial')
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_text("not ours")
    record_baseline(tmp_path / "u.json", _entry(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "t.json", "u.json"]


def test_one_lock_file_per_directory_not_per_baseline(tmp_path: Path) -> None:
    locks = Path(tempfile.gettempdir()) / "pytest-llmperf-locks"
    before = set(locks.iterdir()) if locks.exists() else set()
    for index in range(30):
        record_baseline(tmp_path / f"t{index}.json", _entry(float(index)))
    assert len(set(locks.iterdir()) - before) <= 1


# --- 12. environment mistakes: one message naming the file or option -----------------------------------------


def test_unwritable_baseline_directory_fails_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO_TESTS)
    (pytester.path / "baselines").write_text("a file where the directory should be")
    result = run(pytester, "--update-baselines")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*cannot write the baseline*--llmperf-baseline-dir*"])
    output = result.stdout.str()
    assert "Traceback" not in output and "During handling" not in output


def test_unwritable_report_path_is_a_usage_error_before_any_test(recorded: pytest.Pytester) -> None:
    (recorded.path / "blocked").write_text("a file where a directory should be")
    result = run(recorded, "--llmperf-report", "blocked/report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llmperf-report: cannot write the report to *blocked/report.json*"])
    assert "passed" not in result.stdout.str()


def test_an_error_is_printed_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_knob="""
        def test_knob(engine_factory):
            engine_factory("llama_cpp", n_thread=2)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "During handling of the above exception" not in output
    assert output.count("unknown llama_cpp engine knob 'n_thread'") <= 2  # the failure (and the short summary)
