"""The fingerprint stored with a baseline: what was measured, with what, on what.

It holds the backend and full engine config, the model file's name and sha256, versions of the libraries
that move the numbers, and the hardware class. Volatile fields (clock speed, hostnames, absolute paths)
stay out, so an unchanged setup gives an identical fingerprint and ``diff`` lists only real changes.
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_llmperf.model import file_sha256

#: Recorded in every fingerprint.
BASE_DISTRIBUTIONS = ("pytest-llmperf",)
#: The distributions that take part in a backend's measurement; only these are recorded with its numbers, so
#: a library that does not take part (torch beside llama.cpp) never shows as a change.
BACKEND_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "llama_cpp": ("llama-cpp-python", "numpy"),
    "vllm": ("vllm", "torch"),
    "openai": ("aiohttp",),
}
#: Every distribution the fingerprint may name (README, "Baselines and fingerprints").
TRACKED_DISTRIBUTIONS = ("pytest-llmperf", "llama-cpp-python", "vllm", "lm-eval", "torch", "numpy", "aiohttp")


def library_versions(distributions: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Versions of the base distributions and ``distributions`` (None: not installed), and Python's."""
    versions: dict[str, str | None] = {}
    for name in dict.fromkeys((*BASE_DISTRIBUTIONS, *distributions)):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def distributions_of(backend: object, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The distributions whose versions a measurement on ``backend`` records (plus ``extra``)."""
    return (*BACKEND_DISTRIBUTIONS.get(str(backend), ()), *extra)


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
    from pytest_llmperf.gpu import probe_gpus

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


def environment(backend: str | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of every fingerprint that describes this machine: the versions of the libraries that take part
    in a measurement on ``backend`` (and ``extra``, e.g. lm-eval for a scoring), and the hardware class."""
    return {"versions": library_versions(distributions_of(backend, extra)), "hardware": hardware()}


def fingerprint(engine_description: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fingerprint of a measurement on the engine described by ``engine_description``.

    An engine may name further distributions it runs on under ``"distributions"`` (a launched
    llama_cpp.server runs on llama-cpp-python); they are recorded with their versions.
    """
    description = dict(engine_description)
    model_path = description.pop("model_path", None)
    extra = (*tuple(description.pop("distributions", ())), *extra)
    if model_path is not None:
        path = Path(model_path)
        description["model"] = {"file": path.name, "sha256": file_sha256(path)}
    return {**description, **environment(description.get("backend"), extra)}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable changes from ``old`` to ``new``: ``"versions.llama-cpp-python 0.3.35 -> 0.3.36"``."""
    before, after = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(set(before) | set(after)):
        if key.startswith("versions.") and key not in after:
            continue  # recorded then, not taking part now (older baselines recorded every library)
        if before.get(key) != after.get(key):
            changes.append(f"{key} {_show(before.get(key))} -> {_show(after.get(key))}")
    return changes


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    text = str(value)
    return text[:12] if len(text) == 64 and all(ch in "0123456789abcdef" for ch in text) else text
