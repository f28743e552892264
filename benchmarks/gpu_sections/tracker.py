"""Section 1, ``tracker``: ``NvmlTracker`` against torch's allocations, a short spike at three sampling
intervals, the tracker's own cost and its effect on a GPU loop, power and energy under bf16 matmuls."""

from __future__ import annotations

import itertools
import os
import statistics
import time
from typing import Any

from gpu_sections.common import GIB, MIB, Context, NvmlProbe, Section, unavailable


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
