"""Baseline writes under SIGKILL and under many xdist workers: every file is the old or the new whole JSON."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_llmperf.core.baseline import load_baseline


def _suite(pytester: pytest.Pytester, count: int, value: float) -> None:
    pytester.makepyfile(
        test_many=f"""
        import pytest

        @pytest.mark.perf
        @pytest.mark.parametrize("index", range({count}))
        def test_metric(llmperf, index):
            llmperf.check({{"e2e_p99": {value}, "completion_tok_s": 100.0 + index}})
        """
    )


def _values(directory: Path) -> list[float]:
    values = []
    for path in sorted(directory.glob("*.json")):
        baseline = load_baseline(path)  # raises on a torn or partial file
        assert baseline is not None
        values.append(baseline.entries[0].metrics["e2e_p99"].value)
    return values


def test_sigkill_during_update_leaves_old_or_new_files(pytester: pytest.Pytester) -> None:
    count = 150
    _suite(pytester, count, 1.0)
    pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--update-baselines").assert_outcomes(passed=count)
    directory = pytester.path / "baselines/test_many"
    assert _values(directory) == [1.0] * count

    rng = random.Random(1234)
    command = [sys.executable, "-m", "pytest", "-m", "perf", "-p", "no:cacheprovider", "-q", "--update-baselines"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    seen_mixed = False
    for attempt in range(12):
        _suite(pytester, count, 2.0 + attempt)  # each attempt writes a new value
        process = subprocess.Popen(
            command, cwd=pytester.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.3, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        values = _values(directory)
        assert len(values) == count
        # Every file holds a value some run wrote completely: the original or one of the attempts so far.
        assert set(values) <= {1.0, *(2.0 + earlier for earlier in range(attempt + 1))}
        seen_mixed |= len(set(values)) > 1
        leftovers = [p.name for p in directory.iterdir() if p.suffix != ".json"]
        # A kill between writing a temp file and renaming it may leave the temp file, never a broken baseline.
        assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)
    assert seen_mixed, "no kill landed in the middle of the writes; the test did not exercise anything"


def test_four_workers_update_two_hundred_baselines(pytester: pytest.Pytester) -> None:
    _suite(pytester, 200, 0.5)
    result = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "-n", "4", "--update-baselines")
    result.assert_outcomes(passed=200)
    directory = pytester.path / "baselines/test_many"
    assert _values(directory) == [0.5] * 200
    stored = sorted(
        json.loads(path.read_text())["metrics"]["completion_tok_s"]["value"] for path in directory.iterdir()
    )
    assert stored == [100.0 + index for index in range(200)]
