"""The llmperf summary says why perf tests were skipped without -rs: one line per kind of reason with its count."""

from __future__ import annotations

import pytest

from pytest_llmperf.reports.terminal import MAX_SKIP_GROUPS, skip_lines

SKIPPING = """
import pytest

@pytest.mark.perf
@pytest.mark.parametrize("n", range(3))
def test_busy(n):
    pytest.skip(f"test_skipping.py::test_busy[{n}]: not judged: the machine ran {30 + n}% slower than when the "
                f"baseline was recorded; measured: completion_tok_s {100 - n}")

@pytest.mark.perf
@pytest.mark.gpu(count=8)
def test_gpu():
    pass

@pytest.mark.perf
def test_ok(llmperf):
    llmperf.check({"e2e_p99": 0.5})

def test_not_perf():
    pytest.skip("a unit test's own reason")
"""


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]])
def test_skip_reasons_are_summarised(pytester: pytest.Pytester, workers: list[str]) -> None:
    pytester.makepyfile(test_skipping=SKIPPING)
    result = pytester.runpytest("-p", "no:cacheprovider", *workers)
    result.assert_outcomes(passed=1, skipped=5, warnings=1)
    result.stdout.fnmatch_lines([
        "*= llmperf =*",
        "skipped: 4 perf tests (pytest -rs lists each with its reason)",
        "  skipped 3: not judged: the machine ran 3?% slower than when the baseline was recorded (numbers vary)",
        "  skipped 1: needs 8 GPU(s)*",
    ])
    assert "unit test's own reason" not in result.stdout.str()  # not a perf test
    assert "measured: completion_tok_s" not in result.stdout.str()  # the details stay with -rs


def test_only_skips_make_a_section(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_needs_gpus="import pytest\n\n@pytest.mark.gpu(count=8)\ndef test_gpu():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*= llmperf =*", "skipped: 1 perf test *", "  skipped 1: needs 8 GPU(s)*"])


def test_many_reasons_stay_a_few_lines() -> None:
    skipped = [(f"t.py::test_{i}", f"Skipped: reason number {i} of its own kind {'x' * i}") for i in range(10)]
    skipped += [("t.py::test_long", "t.py::test_long: " + "word " * 60)]
    lines = skip_lines(skipped)
    assert len(lines) == 1 + MAX_SKIP_GROUPS + 1
    assert lines[-1] == f"  skipped {11 - MAX_SKIP_GROUPS}: {11 - MAX_SKIP_GROUPS} other reasons"
    assert all(len(line) < 170 for line in lines)
    assert skip_lines([("t.py::test_long", "t.py::test_long: " + "word " * 60)])[1].endswith("...")
    assert skip_lines([]) == []
    one_more = skip_lines(skipped[:MAX_SKIP_GROUPS + 1])  # a seventh reason is shown, not "1 other reasons"
    assert len(one_more) == 1 + MAX_SKIP_GROUPS + 1 and "other reason" not in one_more[-1]
    assert one_more[-1].startswith("  skipped 1: reason number 6 of its own kind")


def test_a_busy_machine_reason_keeps_its_parentheses_whole() -> None:
    skipped = [(f"t.py::test_{n}", f"t.py::test_{n}: not judged: machine busy (load {n}.5 on 2 cores, other "
                f"processes used 1.{n} cores; {n} of 6 repetitions disturbed); measured: completion_tok_s 9{n}")
               for n in range(1, 4)]
    assert skip_lines(skipped)[1:] == [
        "  skipped 3: not judged: machine busy (load 1.5 on 2 cores, other processes used 1.1 cores; 1 of 6 "
        "repetitions disturbed) (numbers vary)"]
