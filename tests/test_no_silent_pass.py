"""Wrong results never pass silently (issue 12, items 6-8 and 14-16): shared files, infinite tolerances, NaN,
missing and impossible values, unattributed workload changes, unreadable messages, misspelled markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmperf.core.baseline import baseline_path
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.tolerance import ToleranceTable, parse_tolerance
from pytest_llmperf.core.workload import Workload
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.runner import PerfResult


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", *args)


# --- 6. two tests never share a file ---------------------------------------------------------------------------


def test_long_ids_that_share_a_prefix_get_their_own_files(tmp_path: Path) -> None:
    prefix = "test_decode[" + "a" * 160
    first = baseline_path(tmp_path, f"perf_tests/test_x.py::{prefix}-one]")
    second = baseline_path(tmp_path, f"perf_tests/test_x.py::{prefix}-two]")
    assert first != second
    assert len(first.name.encode()) < 255 and len(second.name.encode()) < 255


def test_long_ids_through_pytest_keep_their_own_numbers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_long="""
        import pytest

        CONFIGS = ["x" * 160 + "-slow", "x" * 160 + "-fast"]

        @pytest.mark.perf
        @pytest.mark.parametrize("config", CONFIGS, ids=CONFIGS)
        def test_speed(llmperf, config):
            llmperf.check({"completion_tok_s": 1000.0 if config.endswith("fast") else 100.0})
        """
    )
    run(pytester, "--update-baselines").assert_outcomes(passed=2)
    assert len(list((pytester.path / "baselines/test_long").glob("*.json"))) == 2
    # Sharing one file, the slow configuration was compared with the fast one's numbers (or the reverse).
    run(pytester).assert_outcomes(passed=2)


def test_a_file_of_another_test_is_never_compared(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mine="""
        import pytest

        @pytest.mark.perf
        def test_mine(llmperf):
            llmperf.check({"completion_tok_s": 10.0})
        """
    )
    path = pytester.path / "baselines/test_mine/test_mine.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema": 1, "test": "test_other.py::test_other",
                                "metrics": {"completion_tok_s": {"value": 10.0}}}))
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*holds the baseline of test 'test_other.py::test_other', not of*two tests must not*"])


# --- 7. tolerances are finite --------------------------------------------------------------------------------


@pytest.mark.parametrize("tolerance", ["1e999%", "1e400", "1e999ms", 1e400])
def test_non_finite_tolerances_are_rejected(tolerance: object) -> None:
    with pytest.raises(LlmperfError, match=r"not a finite number|cannot parse"):
        parse_tolerance(tolerance, metric_spec("completion_tok_s"), "--llmperf-tolerance")
    with pytest.raises(LlmperfError, match="--llmperf-tolerance"):
        ToleranceTable([("--llmperf-tolerance", {"e2e_p99": tolerance})])


def test_infinite_tolerance_option_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("--llmperf-tolerance", "completion_tok_s=1e999%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--llmperf-tolerance: tolerance '1e999%' for completion_tok_s is not a finite number*"]
    )


# --- 8. NaN, new, unavailable and impossible values ----------------------------------------------------------

CHECK = """
import os, pytest

@pytest.mark.perf
def test_values(llmperf):
    metrics = {"completion_tok_s": 100.0, "e2e_p99": 0.5}
    extra = os.environ.get("EXTRA")
    if extra:
        name, value = extra.split("=")
        metrics[name] = None if value == "None" else float(value)
    llmperf.check(metrics)
"""


@pytest.fixture
def recorded(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(test_values=CHECK)
    run(pytester, "--update-baselines").assert_outcomes(passed=1)
    return pytester


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ("completion_tok_s=nan", "completion_tok_s is nan, not a finite number"),
        ("e2e_p99=inf", "e2e_p99 is inf, not a finite number"),
        ("e2e_p99=-0.2", "e2e_p99 is -0.2; a s value cannot be negative"),
        ("e2e_p99=None", "e2e_p99 could not be measured"),
        ("ttft_p99=0.1", "ttft_p99 is not in the baseline"),
    ],
)
def test_values_without_a_verdict_warn_and_fail_in_strict_mode(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, extra: str, said: str
) -> None:
    monkeypatch.setenv("EXTRA", extra)
    local = run(recorded)
    local.assert_outcomes(passed=1, warnings=1)
    local.stdout.fnmatch_lines([f"*test_values.py::test_values: not judged: *{said}*"])
    strict = run(recorded, "--llmperf-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines([f"*?strict? test_values.py::test_values: not judged: *{said}*"])


@pytest.mark.parametrize("extra", ["e2e_p99=-0.2", "completion_tok_s=nan", "e2e_p99=inf"])
def test_impossible_values_are_never_written(
    recorded: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, extra: str
) -> None:
    path = recorded.path / "baselines/test_values/test_values.json"
    before = path.read_text()
    monkeypatch.setenv("EXTRA", extra)
    result = run(recorded, "--update-baselines")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{path}: not written: {extra.split('=')[0]} is*"])
    assert path.read_text() == before
    assert "Traceback" not in result.stdout.str()
    monkeypatch.delenv("EXTRA")
    run(recorded).assert_outcomes(passed=1)  # the file is still readable


# --- 14. a changed workload is attributed ----------------------------------------------------------------------


def test_a_workload_change_is_listed_beside_the_regression(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_work="""
        import os, pytest

        @pytest.mark.perf
        def test_work(llmperf):
            n_prompt = int(os.environ.get("N_PROMPT", "48"))
            llmperf.check({"ttft_p50": n_prompt / 1000}, workload={"n_prompt": n_prompt, "n_predict": 32})
        """
    )
    run(pytester, "--update-baselines").assert_outcomes(passed=1)
    monkeypatch.setenv("N_PROMPT", "1024")
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*changed since the baseline was recorded:*", "*workload.n_prompt 48 -> 1024*"])


# --- 15. a result prints as one readable line -------------------------------------------------------------------


def test_perf_result_repr_is_one_short_line() -> None:
    samples = {"completion_tok_s": [float(i) for i in range(500)]}
    result = PerfResult(
        {"completion_tok_s": 123.456, "e2e_p99": 6.1, "itl_p50": 0.01}, samples, Workload(), {"backend": "llama_cpp"}
    )
    text = repr(result)
    assert "\n" not in text and len(text) < 200
    assert "completion_tok_s=123.5" in text and "e2e_p99=6.1" in text and "llama_cpp" in text
    assert "samples" not in text and "499" not in text


def test_failing_assert_on_a_result_is_readable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_assert="""
        from pytest_llmperf.measure.runner import PerfResult
        from pytest_llmperf import Workload

        def test_slo():
            result = PerfResult({"e2e_p99": 6.1}, {"e2e_p99": [6.1] * 400}, Workload(), {"backend": "llama_cpp"})
            assert result.e2e_p99 < 5.0
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*where 6.1 = PerfResult(e2e_p99=6.1; llama_cpp engine, *).e2e_p99*"])
    assert "6.1, 6.1, 6.1" not in result.stdout.str()


# --- 16. bad tolerances name the marker and the closest metric; misspelled markers are caught -------------------


def test_misspelled_metric_in_the_marker_names_the_marker_and_a_suggestion(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_marker="""
        import pytest

        @pytest.mark.perf
        @pytest.mark.perf_tolerance(completion_toks_s="10%")
        def test_marker(llmperf):
            llmperf.check({"completion_tok_s": 1.0})
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)  # at setup, before anything is measured
    result.stdout.fnmatch_lines(
        ["*marker perf_tolerance on test_marker.py::test_marker: unknown metric 'completion_toks_s' "
         "(did you mean 'completion_tok_s'*"]
    )


def test_a_misspelled_plugin_marker_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_typo="""
        import pytest

        @pytest.mark.perf
        @pytest.mark.perf_tolerence(completion_tok_s="90%")
        def test_typo():
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown marker 'perf_tolerence'; did you mean 'perf_tolerance'?*"])
