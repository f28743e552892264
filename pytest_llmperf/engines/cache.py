"""Engines built once per session per config, and closed at the end; the ``engine_factory`` fixture's object."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

from pytest_llmperf.engines import BACKENDS, IN_PROCESS_BACKENDS, Engine, create_engine, warm_up
from pytest_llmperf.errors import EngineError


def _config_key(backend: str, config: dict[str, Any]) -> str:
    return json.dumps([backend, config], sort_keys=True, default=str)


def process_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class EngineCache:
    """Builds engines on demand and hands out the same instance for the same backend and config.

    At most one in-process engine is alive at a time: building another closes the previous one first. Two
    models in one process would each count in the other's host memory (and on a GPU, vLLM needs the card to
    itself), so memory numbers would depend on which tests ran before.
    """

    def __init__(self, default_backend: str = "llama_cpp", models: Mapping[str, str] | None = None) -> None:
        unknown = sorted(set(models or {}) - set(BACKENDS) - {""})
        if unknown:
            raise EngineError(f"--llmperf-model names unknown backend {', '.join(map(repr, unknown))}; "
                              f"available backends: {', '.join(sorted(BACKENDS))}")
        self.default_backend = default_backend
        #: The run's models (``--llmperf-model``): by backend, ``""`` for every backend without its own.
        self.models = dict(models or {})
        self._engines: dict[str, Engine] = {}
        self._rss_base: dict[int, int] = {}
        #: What ``get`` relaunched since the caller last looked (the fixture warns with it).
        self.relaunched: list[str] = []

    def get(self, backend: str | None = None, keep: Collection[int] = (), **config: Any) -> Engine:
        """The engine of ``backend`` (default: the run's backend) with ``config``; built on first use.

        Without a ``model`` key the run's model for the backend (``--llmperf-model BACKEND=MODEL``, else a plain
        ``--llmperf-model MODEL``) is used, else the backend's default
        (for ``llama_cpp``, the embedded tiny model). Building an in-process engine closes the other in-process
        engines (their memory would count in the new one's host memory), except those whose ``id`` is in
        ``keep``: the ones the same test still uses (an A/B needs both).
        """
        backend = backend or self.default_backend
        model = self.models.get(backend, self.models.get(""))
        if "model" not in config and model is not None:
            config["model"] = model
        key = _config_key(backend, config)
        cached = self._engines.get(key)
        ended = getattr(cached, "ended", None)
        how = ended() if ended is not None else None
        if cached is not None and how is not None:
            # A launched server that died (crash, OOM kill) is launched anew for the tests that follow.
            self.relaunched.append(f"the {backend} engine's server {how}; launched a new one for this test")
            del self._engines[key]
            self._rss_base.pop(id(cached), None)
            cached.close()
        if key not in self._engines:
            if backend in IN_PROCESS_BACKENDS:
                self._close(lambda engine: engine.backend in IN_PROCESS_BACKENDS and id(engine) not in keep)
                warm_up(backend)
                release_freed_memory()
            rss_before = process_rss_bytes()
            engine = create_engine(backend, config)
            self._engines[key] = engine
            self._rss_base[id(engine)] = rss_before
        return self._engines[key]

    def rss_base_bytes(self, engine: Engine) -> int | None:
        """The process's resident memory just before ``engine`` was built (None: not built here)."""
        return self._rss_base.get(id(engine))

    def _close(self, which: Callable[[Engine], bool]) -> None:
        for key, engine in list(self._engines.items()):
            if which(engine):
                del self._engines[key]
                self._rss_base.pop(id(engine), None)
                engine.close()
                release_freed_memory()

    def close_all(self) -> None:
        self._close(lambda engine: True)


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), so the next engine's RSS starts clean.

    Without it the next engine reuses pages its predecessor freed, and its host memory reads lower than
    the same engine built first in a session.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    library = ctypes.util.find_library("c")
    if library is None:
        return
    try:
        trim = ctypes.CDLL(library).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


class EngineFactory:
    """``engine_factory(backend=None, **config)``: an engine, cached for the session by its config.

    A cached engine whose server has died is launched anew, with a warning (``warning_class``).
    """

    def __init__(self, cache: EngineCache, warning_class: type[Warning] = UserWarning) -> None:
        self._cache = cache
        self._warning = warning_class
        #: Engines this test got: building another one keeps them open.
        self._mine: set[int] = set()

    def __call__(self, backend: str | None = None, **config: Any) -> Engine:
        engine = self._cache.get(backend, keep=self._mine, **config)
        self._mine.add(id(engine))
        while self._cache.relaunched:
            warnings.warn(self._warning(self._cache.relaunched.pop(0)), stacklevel=2)
        return engine
