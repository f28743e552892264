"""Engines: one module per backend behind the small ``Engine`` protocol.

Backend modules are imported only when an engine of that backend is built, so installing the plugin costs
nothing to a project that never measures (``llama_cpp`` is a heavy import).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

from pytest_llmperf.core.workload import Request, RequestRecord
from pytest_llmperf.errors import EngineError, EngineUnavailable

#: backend name -> "module:class", imported lazily.
BACKENDS: dict[str, str] = {
    "llama_cpp": "pytest_llmperf.engines.llama_cpp:LlamaCppEngine",
    "vllm": "pytest_llmperf.engines.vllm:VllmEngine",
    "openai": "pytest_llmperf.engines.openai:OpenAIEngine",
}


#: The package extra that installs what a backend needs.
_EXTRAS = {"llama_cpp": "llama", "vllm": "vllm", "openai": "openai"}

#: Backends that load the model into this process (their memory shows in this process's RSS).
IN_PROCESS_BACKENDS = frozenset({"llama_cpp", "vllm"})


class Engine(Protocol):
    """What the runner needs from an engine."""

    backend: str

    def describe(self) -> dict[str, Any]:
        """Backend, full engine config and model file, for the baseline fingerprint (no secrets)."""

    def make_prompt(self, seed: int, n_tokens: int) -> list[int] | str:
        """A prompt of exactly ``n_tokens`` tokens whose content is unique to ``seed``."""

    def tag_prompt(self, text: str, seed: int) -> list[int] | str:
        """``text`` made unique to ``seed`` (for prompts from a file) without touching its meaning much."""

    def run(
        self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None, seed: int = 0
    ) -> list[RequestRecord]:
        """Send ``requests`` (streaming, EOS suppressed) and record each one's timings and token counts."""

    def close(self) -> None:
        """Free the engine's memory and stop anything it started."""


def backend_module(backend: str) -> tuple[Any, str]:
    """The imported module of ``backend`` and its engine class name; raises naming a bad backend."""
    target = BACKENDS.get(backend)
    if target is None:
        raise EngineError(f"unknown engine backend {backend!r}; available backends: {', '.join(sorted(BACKENDS))}")
    module_name, _, class_name = target.partition(":")
    try:
        return importlib.import_module(module_name), class_name
    except ImportError as error:
        raise EngineUnavailable(
            f"backend {backend!r} needs a package that is not installed ({error.name}); "
            f"install it, e.g. `pip install 'pytest-llmperf[{_EXTRAS.get(backend, backend)}]'`"
        ) from None


def warm_up(backend: str) -> None:
    """Pay a backend's one-time process costs (if it has any) before anything is measured."""
    module, _ = backend_module(backend)
    hook = getattr(module, "warm_up", None)
    if hook is not None:
        hook()


def create_engine(backend: str, config: dict[str, Any]) -> Engine:
    """Build an engine of ``backend`` from ``config``; raises EngineError naming a bad backend or knob."""
    module, class_name = backend_module(backend)
    engine: Engine = getattr(module, class_name)(**config)
    return engine
