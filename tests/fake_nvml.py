"""A stand-in for ``pynvml`` (nvidia-ml-py 13) with scripted GPUs: no GPU can exist on these machines.

Only the boundary is faked, shaped like the real module: the same function names and argument order, struct-like
results with the real field names (``total/free/used``, ``pid/usedGpuMemory``, ``gpu/memory``), milliwatts and
millijoules, ``NVMLError`` with an ``NVMLError_NotSupported`` subclass, str names and UUIDs (as nvidia-ml-py >= 12
returns them). Each reading of a scripted series returns its next value, the last one repeating.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

GIB = 1024**3


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total_gib: float = 80
    used_gib: list[float] = field(default_factory=lambda: [1.0])
    # one list of (pid, bytes) per reading
    processes: list[list[tuple[int, int | None]]] | None = field(default_factory=lambda: [[]])
    utilisation: list[int] = field(default_factory=lambda: [50])
    power_mw: list[int] | None = field(default_factory=lambda: [300_000])
    energy_mj: list[int] | None = field(default_factory=lambda: [0])
    reads: dict[str, int] = field(default_factory=dict)

    def next(self, name: str, series: list) -> object:  # type: ignore[type-arg]
        index = self.reads.get(name, 0)
        self.reads[name] = index + 1
        return series[min(index, len(series) - 1)]


def make_pynvml(gpus: list[FakeGpu], driver: str = "550.54.15", cuda: int = 12040) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.NVMLError = NVMLError  # type: ignore[attr-defined]
    module.NVMLError_NotSupported = NVMLError_NotSupported  # type: ignore[attr-defined]
    module.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound  # type: ignore[attr-defined]
    module.calls = []  # type: ignore[attr-defined]

    def call(name: str) -> None:
        module.calls.append(name)  # type: ignore[attr-defined]

    def nvmlInit() -> None:
        call("nvmlInit")

    def nvmlShutdown() -> None:
        call("nvmlShutdown")

    def nvmlDeviceGetCount() -> int:
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(index: int) -> FakeGpu:
        return gpus[index]

    def nvmlDeviceGetUUID(handle: FakeGpu) -> str:
        return handle.uuid

    def nvmlDeviceGetName(handle: FakeGpu) -> str:
        return handle.name

    def nvmlDeviceGetMemoryInfo(handle: FakeGpu) -> types.SimpleNamespace:
        used = int(float(handle.next("used", handle.used_gib)) * GIB)  # type: ignore[arg-type]
        total = int(handle.total_gib * GIB)
        return types.SimpleNamespace(total=total, free=total - used, used=used)

    def nvmlDeviceGetComputeRunningProcesses(handle: FakeGpu) -> list[types.SimpleNamespace]:
        if handle.processes is None:
            raise NVMLError_NotSupported("Not Supported")
        reading = handle.next("processes", handle.processes)
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in reading]  # type: ignore[attr-defined]

    def nvmlDeviceGetUtilizationRates(handle: FakeGpu) -> types.SimpleNamespace:
        return types.SimpleNamespace(gpu=handle.next("utilisation", handle.utilisation), memory=0)

    def nvmlDeviceGetPowerUsage(handle: FakeGpu) -> int:
        if handle.power_mw is None:
            raise NVMLError_NotSupported("Not Supported")
        return int(handle.next("power", handle.power_mw))  # type: ignore[call-overload]

    def nvmlDeviceGetTotalEnergyConsumption(handle: FakeGpu) -> int:
        if handle.energy_mj is None:
            raise NVMLError_NotSupported("Not Supported")
        return int(handle.next("energy", handle.energy_mj))  # type: ignore[call-overload]

    def nvmlSystemGetDriverVersion() -> str:
        return driver

    def nvmlSystemGetCudaDriverVersion() -> int:
        return cuda

    for function in (
        nvmlInit,
        nvmlShutdown,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetUUID,
        nvmlDeviceGetName,
        nvmlDeviceGetMemoryInfo,
        nvmlDeviceGetComputeRunningProcesses,
        nvmlDeviceGetUtilizationRates,
        nvmlDeviceGetPowerUsage,
        nvmlDeviceGetTotalEnergyConsumption,
        nvmlSystemGetDriverVersion,
        nvmlSystemGetCudaDriverVersion,
    ):
        setattr(module, function.__name__, function)
    return module
