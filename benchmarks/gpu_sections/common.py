"""What every section of ``benchmarks/gpu_check.py`` uses: a section's outcome, the run's context, child pytest
and Python processes, and direct NVML readings."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # a checkout without `pip install -e .` (a bare GPU box)
    sys.path.insert(0, str(ROOT))

GIB = 1024**3
MIB = 1024**2
CHILD_MARK = "GPU_CHECK_CHILD "
#: Environment variables of an outer pytest run that must not leak into the child pytest runs.
_OUTER_PYTEST = ("CI", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS",
                 "LLMPERF_WORKER_GPUS")


def unavailable(reason: str) -> str:
    """What a GPU-only number reads without a GPU: a reason, never 0."""
    return f"unavailable: no GPU ({reason})"


@dataclass
class Section:
    """One section's outcome: ok, mismatch (a check did not hold), failed (it raised), unavailable, not run."""

    name: str
    status: str = "not run"
    reason: str = ""
    seconds: float | None = None
    results: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "passed": bool(passed), "detail": detail})
        return bool(passed)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "seconds": self.seconds, "results": self.results,
                "checks": self.checks}


@dataclass
class Context:
    """What every section needs: the run's settings, the GPU (or why there is none) and the time left."""

    quick: bool
    work_dir: Path
    deadline: float
    no_gpu: str  # "" when NVML shows a GPU and torch can use it
    devices: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, Section] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, wanted: float) -> float:
        return max(5.0, min(wanted, self.remaining()))


# --- child processes ---------------------------------------------------------------------------------------


def child_env(**extra: str | None) -> dict[str, str]:
    """This environment for a child: the repository importable, no outer pytest's settings, ``extra`` applied
    (None removes a variable)."""
    environ = {key: value for key, value in os.environ.items() if key not in _OUTER_PYTEST}
    # Absolute entries: the children run in other directories (PYTHONPATH=.:.gpu_carry must still reach gguf).
    inherited = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *inherited])
    environ.setdefault("HF_HUB_OFFLINE", "1")
    for key, value in extra.items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return environ


def plugin_args() -> list[str]:
    """``-p pytest_llmperf.plugin`` where the plugin is not installed (its pytest11 entry point loads it)."""
    from importlib.metadata import entry_points

    installed = any(point.value.startswith("pytest_llmperf") for point in entry_points(group="pytest11"))
    return [] if installed else ["-p", "pytest_llmperf.plugin"]


def tail(text: str, limit: int = 2500) -> str:
    return text if len(text) <= limit else "..." + text[-limit:]


def junit_outcomes(path: Path) -> list[dict[str, str]]:
    """Every test case of a JUnit XML file: name, outcome (passed, skipped, error, failed) and message."""
    if not path.is_file():
        return []
    cases = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            kind = {"skipped": "skipped", "error": "error", "failure": "failed"}.get(child.tag)
            if kind is not None:
                outcome, message = kind, child.get("message", "")
        cases.append({"test": case.get("name", ""), "outcome": outcome, "message": message})
    return cases


def by_test(cases: list[dict[str, str]]) -> dict[str, str]:
    return {case["test"]: case["outcome"] for case in cases}


def run_pytest(args: Sequence[str], cwd: Path, timeout: float, label: str, files: Path,
               **env: str | None) -> dict[str, Any]:
    """pytest in a child process run in ``cwd``; its exit code, JUnit outcomes (written under ``files``), seconds
    and the end of its output."""
    junit = files / f"junit-{label}.xml"
    junit.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", *plugin_args(), "-p", "no:cacheprovider", "-rs",
               f"--junitxml={junit}", *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=child_env(**env), capture_output=True, text=True, timeout=timeout)
    return {
        "command": shlex.join(["pytest", *args]),
        "exit_code": done.returncode,
        "seconds": round(time.perf_counter() - started, 2),
        "outcomes": junit_outcomes(junit),
        "output_tail": tail(done.stdout + done.stderr),
    }


def run_child(code: str, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """``python -c code`` whose last ``GPU_CHECK_CHILD {json}`` line is its answer."""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_MARK)]
    if not lines:
        return {"error": f"exit {done.returncode}, no answer: {tail(done.stdout + done.stderr, 800)}"}
    answer: dict[str, Any] = json.loads(lines[-1][len(CHILD_MARK):])
    return answer


# --- NVML readings beside the tracker's (section 1) ---------------------------------------------------------


class NvmlProbe:
    """Direct NVML readings of the first visible GPU, beside the tracker's."""

    def __init__(self) -> None:
        from pytest_llmperf.core.hardware import load_nvml, visible_devices

        nvml, reason = load_nvml()
        if nvml is None:
            raise RuntimeError(reason)
        self.nvml: Any = nvml
        self.device = visible_devices(self.nvml)[0]

    def memory(self) -> dict[str, Any]:
        info = self.nvml.nvmlDeviceGetMemoryInfo(self.device.handle)
        reading: dict[str, Any] = {"used_gib": info.used / GIB, "free_gib": info.free / GIB,
                                   "total_gib": info.total / GIB}
        try:  # v2 separates the driver's reserved memory from what allocations use
            v2 = self.nvml.nvmlDeviceGetMemoryInfo(self.device.handle, version=self.nvml.nvmlMemory_v2)
            reading["v2_used_gib"], reading["v2_reserved_gib"] = v2.used / GIB, v2.reserved / GIB
        except (self.nvml.NVMLError, AttributeError, TypeError) as error:
            reading["v2"] = f"unavailable: {error}"
        return reading

    def processes(self) -> list[dict[str, Any]] | str:
        try:
            listed = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.device.handle)
        except self.nvml.NVMLError as error:
            return f"unavailable: {error}"
        return [{"pid": int(p.pid), "used_gib": None if p.usedGpuMemory is None else p.usedGpuMemory / GIB}
                for p in listed]

    def energy_mj(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.device.handle))

    def close(self) -> None:
        self.nvml.nvmlShutdown()
