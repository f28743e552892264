"""The fingerprint stored with a baseline: what was measured, with what, on what.

It holds the backend and full engine config, the model file's name and sha256, versions of the libraries
that move the numbers, and the hardware class. Volatile fields (clock speed, hostnames, absolute paths)
stay out, so an unchanged setup gives an identical fingerprint and ``diff`` lists only real changes.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_llmperf.model import file_sha256

#: Distributions whose version is recorded (missing ones are recorded as None).
TRACKED_DISTRIBUTIONS = ("pytest-llmperf", "llama-cpp-python", "vllm", "lm-eval", "torch", "numpy")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The hardware class: what must match for numbers to be comparable."""
    model = cpu_model()
    cores = os.cpu_count() or 0
    return {
        "class": f"cpu:{model}:{cores}",
        "cpu": model,
        "cpu_count": cores,
        "machine": platform.machine(),
        "system": platform.system(),
    }


def fingerprint(engine_description: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint of a measurement on the engine described by ``engine_description``."""
    description = dict(engine_description)
    model_path = description.pop("model_path", None)
    if model_path is not None:
        path = Path(model_path)
        description["model"] = {"file": path.name, "sha256": file_sha256(path)}
    return {**description, "versions": library_versions(), "hardware": hardware()}


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
        if before.get(key) != after.get(key):
            changes.append(f"{key} {_show(before.get(key))} -> {_show(after.get(key))}")
    return changes


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    text = str(value)
    return text[:12] if len(text) == 64 and all(ch in "0123456789abcdef" for ch in text) else text
