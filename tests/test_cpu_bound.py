"""Which engines compute on this CPU, so that their samples are compared at the same machine speed."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmperf.measure import calls


class _Engine:
    def __init__(self, backend: str, pids: list[int] | str | None = "absent", **config: Any) -> None:
        self._described = {"backend": backend, "engine_config": config}
        if pids != "absent":
            self.host_memory_pids = lambda: pids

    def describe(self) -> dict[str, Any]:
        return self._described


@pytest.mark.parametrize(("engine", "gpu", "expected"), [
    (_Engine("llama_cpp"), False, True),
    (_Engine("llama_cpp", n_gpu_layers=99), True, False),
    (_Engine("openai", pids=[123]), False, True),  # a server launched here, no GPU: it runs on these cores
    (_Engine("openai", pids=[123]), True, False),  # ... with a GPU it may compute there
    (_Engine("openai", pids=None), False, False),  # attached by URL: it may run anywhere
    (_Engine("vllm"), False, False),
])
def test_cpu_bound(monkeypatch: pytest.MonkeyPatch, engine: _Engine, gpu: bool, expected: bool) -> None:
    monkeypatch.setattr(calls, "_has_gpu", lambda: gpu)
    assert calls.cpu_bound(engine) is expected  # type: ignore[arg-type]
