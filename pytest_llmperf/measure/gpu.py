"""GPU memory, utilisation, power and energy through NVML (``pynvml`` from nvidia-ml-py), sampled on a thread.

Only the devices this process may use are tracked: ``CUDA_VISIBLE_DEVICES`` is honoured the way CUDA reads it
(indices or ``GPU-`` UUIDs, possibly abbreviated; an entry that matches nothing ends the list). Two memory
views are kept for every device, because they answer different questions:

- device-level ``used`` (``nvmlDeviceGetMemoryInfo``): what the device has allocated, whoever asked. vLLM
  reserves up to ``gpu_memory_utilization`` of the device at start-up, so this shows the reservation;
- per-process (``nvmlDeviceGetComputeRunningProcesses``): the memory of the tracked processes only (this
  process and its children by default, e.g. a server the plugin launched).

Metrics, as the study defines them: ``mem_max_gib`` is the max over devices of each device's peak,
``mem_mean_gib`` the mean over devices of each device's peak; ``mem_gpu<N>_gib`` the peak of device N (N = the
position in ``CUDA_VISIBLE_DEVICES``, as CUDA numbers it); ``mem_process_gib`` the peak of the tracked
processes' memory summed over devices. With no NVML or no visible GPU every metric is None and ``reason`` says
why — never a zero. ``mem_process_gib`` alone is None (``process_reason`` says why) when a device cannot list
processes, when NVML reports a tracked process's memory as not available (``usedGpuMemory`` None), or when no
tracked process ever appeared in NVML's list: NVML lists processes by the host's PIDs, so inside a container's
PID namespace this process is never found, and a process that used no GPU looks the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any

from pytest_llmperf.core.hardware import GpuDevice, load_nvml, visible_devices
from pytest_llmperf.core.metrics import GIB
from pytest_llmperf.core.processes import tree_pids

__all__ = ["GpuDevice", "NvmlTracker", "load_nvml", "visible_devices"]



@dataclass
class DeviceTrace:
    """What the sampler saw on one device."""

    device: GpuDevice
    used_bytes: list[int] = field(default_factory=list)
    #: The tracked processes' memory per sample; None where NVML reported one of them as not available.
    process_bytes: list[int | None] = field(default_factory=list)
    #: Whether any tracked process appeared in NVML's process list of this device.
    process_seen: bool = False
    utilisation_pct: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    energy_start_mj: int | None = None
    energy_end_mj: int | None = None

    @property
    def energy_j(self) -> float | None:
        if self.energy_start_mj is None or self.energy_end_mj is None:
            return None
        return (self.energy_end_mj - self.energy_start_mj) / 1000.0


def _optional(read: Callable[[], Any], nvml_error: type[BaseException]) -> Any:
    """NVML readings some devices do not support (power, energy, per-process memory on WDDM): None."""
    try:
        return read()
    except nvml_error:
        return None


#: How often the per-process view re-reads its set of processes (the default walks this process's children,
#: ~1.2 ms a time measured against the fake NVML here: at every 10 ms sample that alone was ~11% of a core).
PIDS_REFRESH_S = 0.5


def _default_pids() -> set[int]:
    return set(tree_pids())


class NvmlTracker:
    """Samples the visible GPUs every ``interval_s`` on a background thread while a ``with`` block runs.

    ``pids`` chooses the processes of the per-process view (default: this process and its children, re-read
    every ``PIDS_REFRESH_S`` so a server started inside the block is counted from its first half second on).
    """

    def __init__(
        self,
        interval_s: float = 0.05,
        pids: Iterable[int] | Callable[[], set[int]] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"nvml_tracker: interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        if pids is None:
            self._pids: Callable[[], set[int]] = _default_pids
        elif callable(pids):
            self._pids = pids
        else:
            fixed = set(pids)
            self._pids = lambda: fixed
        self._environ = environ
        self._pid_set: set[int] = set()
        self._pids_read_at: float | None = None
        self.nvml: Any = None
        self.reason = ""
        self.traces: list[DeviceTrace] = []
        self.sampling_s = 0.0  # time spent inside NVML calls: the tracker's own overhead
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.nvml is not None and bool(self.traces)

    def start(self) -> NvmlTracker:
        self.nvml, self.reason = load_nvml()
        if self.nvml is None:
            return self
        devices = visible_devices(self.nvml, self._environ)
        if not devices:
            self.reason = "no GPU is visible (CUDA_VISIBLE_DEVICES selects none)"
            return self
        self.traces = [DeviceTrace(device) for device in devices]
        for trace in self.traces:
            trace.energy_start_mj = self._energy(trace.device)
        self.sample()
        self._thread = threading.Thread(target=self._run, name="llmperf-nvml", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.traces:
            self.sample()
            for trace in self.traces:
                trace.energy_end_mj = self._energy(trace.device)
        if self.nvml is not None:
            self.nvml.nvmlShutdown()

    def __enter__(self) -> NvmlTracker:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def _energy(self, device: GpuDevice) -> int | None:
        reading = _optional(lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(device.handle), self.nvml.NVMLError)
        return None if reading is None else int(reading)

    def sample(self) -> None:
        """Read every device once (the thread calls this; tests call it to replay scripted traces)."""
        started = time.perf_counter()
        if self._pids_read_at is None or started - self._pids_read_at >= PIDS_REFRESH_S:
            self._pid_set, self._pids_read_at = self._pids(), started
        nvml, pids = self.nvml, self._pid_set
        for trace in self.traces:
            handle = trace.device.handle
            trace.used_bytes.append(int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
            processes = _optional(partial(nvml.nvmlDeviceGetComputeRunningProcesses, handle), nvml.NVMLError)
            if processes is not None:
                mine = [process for process in processes if process.pid in pids]
                trace.process_seen = trace.process_seen or bool(mine)
                unknown = any(process.usedGpuMemory is None for process in mine)  # NVML_VALUE_NOT_AVAILABLE
                trace.process_bytes.append(None if unknown else sum(int(process.usedGpuMemory) for process in mine))
            utilisation = _optional(partial(nvml.nvmlDeviceGetUtilizationRates, handle), nvml.NVMLError)
            if utilisation is not None:
                trace.utilisation_pct.append(float(utilisation.gpu))
            power = _optional(partial(nvml.nvmlDeviceGetPowerUsage, handle), nvml.NVMLError)
            if power is not None:
                trace.power_w.append(power / 1000.0)
        self.sampling_s += time.perf_counter() - started

    @property
    def process_reason(self) -> str:
        """Why ``mem_process_gib`` is unavailable ("" when it is not)."""
        if not self.available:
            return self.reason
        if not all(trace.process_bytes for trace in self.traces):
            return "NVML cannot list the processes of every device (nvmlDeviceGetComputeRunningProcesses)"
        if any(value is None for trace in self.traces for value in trace.process_bytes):
            return "NVML reported a tracked process's GPU memory as not available"
        if not any(trace.process_seen for trace in self.traces):
            return ("no tracked process appeared in NVML's process list (in a container NVML lists the host's "
                    "PIDs; or the processes used no GPU)")
        return ""

    def _process_peak_gib(self) -> float | None:
        if self.process_reason:
            return None
        # Summed over devices at each sample, then the peak of that sum.
        per_sample = [sum(v for v in values if v is not None)
                      for values in zip(*(t.process_bytes for t in self.traces), strict=False)]
        return float(max(per_sample)) / GIB

    def metrics(self, generated_tokens: int | None = None) -> dict[str, float | None]:
        """Peak/mean memory per device and across devices, utilisation, power, energy (None: unavailable)."""
        names = ["mem_max_gib", "mem_mean_gib", "mem_process_gib", "gpu_util_pct", "gpu_power_w", "gpu_energy_j"]
        if not self.available:
            return dict.fromkeys([*names, "gpu_j_per_token"])
        peaks = [max(trace.used_bytes) / GIB for trace in self.traces]
        result: dict[str, float | None] = {
            "mem_max_gib": max(peaks),
            "mem_mean_gib": sum(peaks) / len(peaks),
        }
        for trace, peak in zip(self.traces, peaks, strict=True):
            result[f"mem_gpu{trace.device.position}_gib"] = peak
        result["mem_process_gib"] = self._process_peak_gib()
        utilisation = [value for trace in self.traces for value in trace.utilisation_pct]
        result["gpu_util_pct"] = sum(utilisation) / len(utilisation) if utilisation else None
        power = [sum(t.power_w) / len(t.power_w) for t in self.traces if t.power_w]
        result["gpu_power_w"] = sum(power) if len(power) == len(self.traces) else None
        energies = [trace.energy_j for trace in self.traces]
        energy = sum(e for e in energies if e is not None) if all(e is not None for e in energies) else None
        result["gpu_energy_j"] = energy
        result["gpu_j_per_token"] = energy / generated_tokens if energy is not None and generated_tokens else None
        return result
