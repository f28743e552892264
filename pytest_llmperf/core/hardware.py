"""The hardware class a measurement ran on: the CPU (py-cpuinfo through pytest-benchmark), and the GPUs NVML
shows this process (``CUDA_VISIBLE_DEVICES`` honoured). Numbers are compared only within one class.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pytest_llmperf.core.metrics import GIB
from pytest_llmperf.errors import LlmperfError

#: Present wherever the NVIDIA kernel driver is loaded (inside a GPU container too).
NVIDIA_DRIVER_FILES = (Path("/proc/driver/nvidia/version"), Path("/dev/nvidiactl"))


def nvidia_driver_loaded() -> bool:
    return any(path.exists() for path in NVIDIA_DRIVER_FILES)


def load_nvml() -> tuple[ModuleType | None, str]:
    """``pynvml``, initialised, or None and the reason it cannot be used here, saying what is actually missing:
    the package (and whether there is a driver at all), the driver's library, the kernel driver, the right."""
    try:
        import pynvml
    except ImportError as error:
        install = "pip install 'pytest-llmperf[nvml]'"
        if error.name != "pynvml":  # installed, but it does not import
            return None, f"nvidia-ml-py is installed but does not import ({error}); reinstall it ({install})"
        if not nvidia_driver_loaded():
            return None, (f"no NVIDIA driver on this machine (no {NVIDIA_DRIVER_FILES[0]}); nvidia-ml-py, which "
                          f"looks for GPUs, is not installed either ({install})")
        return None, ("nvidia-ml-py, which looks for GPUs, is not installed in this Python environment, though an "
                      f"NVIDIA driver is loaded ({install})")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        return None, f"NVML is unavailable: {error}{_nvml_failure(pynvml, error)}"
    return pynvml, ""


def _nvml_failure(pynvml: ModuleType, error: Exception) -> str:
    """What an ``nvmlInit`` error means here, in words (nvidia-ml-py raises a subclass per NVML return code)."""
    def raised(name: str) -> bool:
        kind = getattr(pynvml, name, None)
        return isinstance(kind, type) and isinstance(error, kind)

    if raised("NVMLError_LibraryNotFound"):
        if nvidia_driver_loaded():
            return (" (the NVIDIA kernel driver is loaded, but this process cannot load its libnvidia-ml.so.1: in a "
                    "container, the driver's libraries are not mounted)")
        return " (no NVIDIA driver is installed: libnvidia-ml.so.1 is missing)"
    if raised("NVMLError_DriverNotLoaded"):
        return (" (the driver's library is installed but the NVIDIA kernel driver is not running: no GPU is "
                "attached, or the driver needs loading; nvidia-smi says the same)")
    if raised("NVMLError_NoPermission"):
        return " (this user may not open the NVIDIA devices /dev/nvidia*)"
    if raised("NVMLError_LibRmVersionMismatch"):
        return " (the driver's library and the kernel driver are different versions: reboot after a driver update)"
    return ""


@dataclass(frozen=True)
class GpuDevice:
    """A visible GPU: its position as CUDA numbers it, NVML's handle, and what identifies it."""

    position: int
    handle: Any
    uuid: str
    name: str
    memory_total_bytes: int


def text_of(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def visible_devices(nvml: Any, environ: Mapping[str, str] | None = None) -> list[GpuDevice]:
    """The devices CUDA would give this process, in CUDA's order."""
    environ = os.environ if environ is None else environ
    handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in range(nvml.nvmlDeviceGetCount())]
    by_uuid = {text_of(nvml.nvmlDeviceGetUUID(handle)): handle for handle in handles}
    selection = environ.get("CUDA_VISIBLE_DEVICES")
    if selection is None:
        chosen = handles
    else:
        chosen = []
        for entry in (part.strip() for part in selection.split(",")):
            handle = None
            if entry.isdigit():
                handle = handles[int(entry)] if int(entry) < len(handles) else None
            elif entry.startswith("GPU-"):
                matches = [h for uuid, h in by_uuid.items() if uuid.startswith(entry)]
                handle = matches[0] if len(matches) == 1 else None
            if handle is None or handle in chosen:
                break  # CUDA ignores everything from the first invalid entry on
            chosen.append(handle)
    return [
        GpuDevice(
            position=position,
            handle=handle,
            uuid=text_of(nvml.nvmlDeviceGetUUID(handle)),
            name=text_of(nvml.nvmlDeviceGetName(handle)),
            memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        )
        for position, handle in enumerate(chosen)
    ]


def gpu_hardware(nvml: Any, devices: list[GpuDevice]) -> dict[str, Any]:
    """The GPU part of a fingerprint: names, count, memory, driver and CUDA version; class from them."""
    cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
    names = sorted({device.name for device in devices})
    memory_gib = sorted({round(device.memory_total_bytes / GIB) for device in devices})
    return {
        "class": f"gpu:{'+'.join(names)}x{len(devices)}:{'+'.join(str(m) for m in memory_gib)}GiB",
        "gpus": [device.name for device in devices],
        "gpu_count": len(devices),
        "gpu_memory_gib": memory_gib,
        "driver": text_of(nvml.nvmlSystemGetDriverVersion()),
        "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
    }


def probe_gpus() -> tuple[list[GpuDevice], dict[str, Any] | None, str]:
    """One NVML look at this process's GPUs: the visible devices (their handles are closed again), their
    fingerprint description (None without devices), and why there are none when NVML is unusable."""
    nvml, reason = load_nvml()
    if nvml is None:
        return [], None, reason
    try:
        devices = visible_devices(nvml)
        return devices, gpu_hardware(nvml, devices) if devices else None, ""
    finally:
        nvml.nvmlShutdown()



def worker_devices(
    devices: list[GpuDevice], worker_index: int, worker_count: int, per_worker: int | None = None
) -> list[GpuDevice]:
    """The GPUs of pytest-xdist worker ``worker_index`` of ``worker_count``.

    Contiguous blocks of ``per_worker`` devices (default: as many as divide evenly, at least one); worker i gets
    block i, and a worker past the last whole block gets none (its gpu-marked tests skip with the reason).
    """
    if per_worker is None:
        per_worker = max(1, len(devices) // max(worker_count, 1))
    block = devices[worker_index * per_worker : (worker_index + 1) * per_worker]
    return block if len(block) == per_worker else []


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU part of pytest-benchmark's ``machine_info`` (py-cpuinfo), reduced to its stable fields.

    pytest-benchmark's own call is reused so both plugins name a CPU the same way; clock speeds, cache sizes
    and flags are left out (they drift or say nothing the model name does not). Cached: py-cpuinfo takes
    about a second.
    """
    info: dict[str, Any] = {}
    try:
        from pytest_benchmark.plugin import get_cpu_info

        info = get_cpu_info()  # type: ignore[no-untyped-call]
    except Exception:  # py-cpuinfo fails on exotic platforms; /proc/cpuinfo is the fallback
        info = {}
    model = info.get("brand_raw") or _proc_cpuinfo_model() or platform.processor() or platform.machine()
    cpu: dict[str, Any] = {
        "cpu": str(model),
        "cpu_count": int(info.get("count") or os.cpu_count() or 0),
        "arch": str(info.get("arch") or platform.machine()),
    }
    # Cloud VMs often name every generation alike ("AMD EPYC"); family and model tell Zen 3 from Zen 4.
    for key in ("family", "model"):
        if isinstance(info.get(key), int):
            cpu[f"cpu_{key}"] = info[key]
    return cpu


def _proc_cpuinfo_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def gpu_info() -> dict[str, Any] | None:
    """The visible GPUs from NVML (names, count, memory, driver, CUDA), or None without NVML or GPU."""
    return probe_gpus()[1]


def hardware() -> dict[str, Any]:
    """The hardware class: what must match for numbers to be comparable (the GPUs when there are any)."""
    cpu = cpu_info()
    generation = f" family {cpu['cpu_family']} model {cpu['cpu_model']}" if "cpu_family" in cpu else ""
    description = {"class": f"cpu:{cpu['cpu']}{generation}:{cpu['cpu_count']}", **cpu, "system": platform.system()}
    cached = gpu_info()
    if cached is not None:
        gpu = dict(cached)  # the cached dict stays whole
        description["class"] = gpu.pop("class")
        description.update(gpu)
    return description


def gpu_requirement(args: tuple[Any, ...], kwargs: Mapping[str, Any], where: str) -> tuple[int, float | None]:
    """``(count, min_vram_gib)`` of a ``gpu(count=1, min_vram_gib=None)`` marker; raises naming ``where``."""
    unknown = set(kwargs) - {"count", "min_vram_gib"}
    count = kwargs.get("count", args[0] if args else 1)
    min_vram = kwargs.get("min_vram_gib")
    if unknown or len(args) > 1 or not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise LlmperfError(
            f"{where}: gpu marker takes count=<int >= 1> and min_vram_gib=<number>, got args {args!r} kwargs {kwargs!r}"
        )
    if min_vram is not None and (not isinstance(min_vram, (int, float)) or isinstance(min_vram, bool) or min_vram <= 0):
        raise LlmperfError(f"{where}: gpu marker min_vram_gib must be a positive number, got {min_vram!r}")
    return count, min_vram


def missing_gpus(count: int, min_vram_gib: float | None) -> str | None:
    """Why the visible GPUs do not meet the requirement, or None when they do."""
    devices, _, reason = probe_gpus()
    if reason:
        return f"needs {count} GPU(s): {reason}"
    if not devices:
        selection = os.environ.get("CUDA_VISIBLE_DEVICES")
        return f"needs {count} GPU(s): " + ("the NVIDIA driver is loaded but NVML finds no GPU" if selection is None
                                            else f"none visible (CUDA_VISIBLE_DEVICES={selection!r})")
    if min_vram_gib is not None:
        devices = [d for d in devices if d.memory_total_bytes / GIB >= min_vram_gib]
    if len(devices) < count:
        memory = f" with >= {min_vram_gib} GiB each" if min_vram_gib is not None else ""
        return f"needs {count} GPU(s){memory}, {len(devices)} visible (CUDA_VISIBLE_DEVICES honoured)"
    return None


def worker_environment(worker_id: str, worker_count: int, setting: str) -> dict[str, str]:
    """The environment that pins pytest-xdist worker ``worker_id`` (``gw3``) to its own GPUs: ``CUDA_VISIBLE_DEVICES``
    by UUID (``setting``: "auto" or GPUs per worker), and ``LLMPERF_WORKER_GPUS`` for the measurement lock; empty
    when there is no GPU or pinning is "off"."""
    devices = probe_gpus()[0] if setting != "off" else []
    if not devices:
        return {}
    index = int(worker_id.lstrip("gw"))
    mine = worker_devices(devices, index, worker_count, None if setting == "auto" else int(setting))
    visible = ",".join(device.uuid for device in mine)
    return {"CUDA_VISIBLE_DEVICES": visible, "LLMPERF_WORKER_GPUS": visible or "none"}


#: Clock ticks per second of /proc's CPU times.
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_proc_stat() -> str | None:
    try:
        return Path("/proc/stat").read_text()
    except OSError:
        return None


def machine_ticks() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies of all CPUs from the first line of /proc/stat."""
    text = _read_proc_stat()
    if not text:
        return None
    fields = [int(value) for value in text.split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    # guest time is already counted in user; steal is neither busy nor idle for this guest.
    return user + nice + system + irq + softirq, steal, user + nice + system + idle + iowait + irq + softirq + steal


_free_cores: list[float | None] = []


def free_cores(window_s: float = 0.5) -> float | None:
    """Cores the rest of the machine left idle over ``window_s``, measured once per process (the start of the
    run); None where /proc/stat is missing."""
    if not _free_cores:
        start = machine_ticks()
        time.sleep(window_s)
        end = machine_ticks()
        cores = os.cpu_count() or 1
        if start is None or end is None:
            _free_cores.append(None)
        else:
            busy = (end[0] - start[0]) / TICK / window_s
            _free_cores.append(max(cores - busy, 0.0))
    return _free_cores[0]
