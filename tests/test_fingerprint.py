"""Change attribution and hardware classes, end to end through pytest.

A version change alone passes with the change listed; with a regression it fails naming metric and change;
a baseline recorded on other hardware is skipped (strict: fails) until this machine's numbers are added
beside the other machine's in the same file.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_llmperf.core.fingerprint import environment, hardware

CHECK = """
import pytest

@pytest.mark.perf
def test_speed(llmperf):
    llmperf.check({"completion_tok_s": COMPLETION, "e2e_p99": 0.5}, fingerprint={"backend": "llama_cpp"})
"""
BASELINE = "baselines/test_check/test_speed.json"


def _write_baseline(pytester: pytest.Pytester, fingerprint: dict[str, Any], completion: float = 100.0) -> None:
    path = pytester.path / BASELINE
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = {"completion_tok_s": {"value": completion}, "e2e_p99": {"value": 0.5}}
    data = {"schema": 1, "test": "test_check.py::test_speed", "metrics": metrics, "fingerprint": fingerprint}
    path.write_text(json.dumps(data))


def _run(pytester: pytest.Pytester, completion: float, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_check=CHECK.replace("COMPLETION", str(completion)))
    return pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "-rs", *args)


def _older_llama_cpp() -> dict[str, Any]:
    fingerprint = {"backend": "llama_cpp", **environment("llama_cpp")}
    fingerprint["versions"] = {**fingerprint["versions"], "llama-cpp-python": "0.3.35"}
    return fingerprint


def test_version_change_without_regression_passes_and_lists_the_change(pytester: pytest.Pytester) -> None:
    _write_baseline(pytester, _older_llama_cpp())
    result = _run(pytester, 101.0)
    result.assert_outcomes(passed=1)
    current = environment("llama_cpp")["versions"]["llama-cpp-python"]
    result.stdout.fnmatch_lines([f"*test_check.py::test_speed: changed versions.llama-cpp-python 0.3.35 -> {current}"])


def test_version_change_with_regression_fails_naming_metric_and_change(pytester: pytest.Pytester) -> None:
    _write_baseline(pytester, _older_llama_cpp())
    result = _run(pytester, 50.0)
    result.assert_outcomes(failed=1)
    current = environment("llama_cpp")["versions"]["llama-cpp-python"]
    result.stdout.fnmatch_lines(
        [
            "*performance regression in test_check.py::test_speed*",
            "*completion_tok_s: 100.0 -> 50 (-50.0%, tolerance 30%)*",
            "*changed since the baseline was recorded:*",
            f"*versions.llama-cpp-python 0.3.35 -> {current}*",
        ]
    )


def test_other_hardware_class_is_skipped_then_recorded_beside_it(pytester: pytest.Pytester) -> None:
    other = {"backend": "llama_cpp", **environment("llama_cpp"), "hardware": {"class": "gpu:NVIDIA H100 80GB HBM3:1"}}
    _write_baseline(pytester, other, completion=9000.0)

    skipped = _run(pytester, 100.0)
    skipped.assert_outcomes(skipped=1)
    skipped.stdout.fnmatch_lines(
        ["*holds numbers for hardware 'gpu:NVIDIA H100 80GB HBM3:1'; this machine is*not comparable*"]
    )
    strict = _run(pytester, 100.0, "--llmperf-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*?strict? baseline*not comparable*"])

    _run(pytester, 100.0, "--update-baselines").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / BASELINE).read_text())
    assert stored["metrics"]["completion_tok_s"]["value"] == 9000.0  # the H100's numbers are kept...
    here = stored["other_hardware"][hardware()["class"]]  # ...and this machine's sit beside them
    assert here["metrics"]["completion_tok_s"]["value"] == 100.0

    _run(pytester, 100.0, "--llmperf-strict").assert_outcomes(passed=1)
    _run(pytester, 50.0).assert_outcomes(failed=1)  # compared with this machine's entry, not the H100's
