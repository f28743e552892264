"""Capacity in a check run and its cache: the cache key follows what the answer depends on (the prompts file's
content, a custom probe), and a check run verifies the stored answer by measuring it instead of recalling it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.core.workload import Request, RequestRecord, Workload
from pytest_llmperf.measure import calls

SLO = {"ttft_p99": 0.55}
KWARGS: dict[str, Any] = {"start": 1, "limit": 64, "margin": 1.0, "gate": ("max_concurrency",)}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("LLMPERF_CACHE_DIR", str(directory))
    return directory


class PromptLengthEngine:
    """One sequence at a time: at concurrency c, TTFT is ``0.01 x prompt characters x c`` seconds (a 10-character
    prompt: 0.1 s per queued request, so the SLO ``ttft_p99 <= 0.55`` holds up to c = 5)."""

    backend = "fake"

    def __init__(self) -> None:
        self.levels: list[int] = []

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "engine_config": {"slots": 1}}

    def make_prompt(self, seed: int, n_tokens: int) -> list[int]:
        return [seed] * 10

    def tag_prompt(self, text: str, seed: int) -> str:
        return text

    def run(self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None,
            seed: int = 0) -> list[RequestRecord]:
        self.levels.append(concurrency)
        records = []
        for request in requests:
            ttft = 0.01 * len(request.prompt) * concurrency
            e2e = ttft + 0.4
            tokens = request.max_tokens
            records.append(RequestRecord(0.0, e2e, 4, tokens, [ttft + i * 0.4 / (tokens - 1) for i in range(tokens)]))
        return records

    def close(self) -> None:
        pass


def prompts_file(path: Path, characters: int) -> str:
    path.write_text("".join(f'{{"prompt": "{"x" * characters}"}}\n' for _ in range(4)))
    return str(path)


def test_longer_prompts_in_the_same_file_are_not_answered_from_the_cache(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    workload = Workload(n_prompt=4, n_predict=5, requests=2, warmup=0, prompts_file=prompts_file(prompts, 10))
    first, _ = calls.capacity(PromptLengthEngine(), workload, SLO, update=False, **KWARGS)
    assert first.max_concurrency == 5
    prompts_file(prompts, 100)  # ten times longer: TTFT 1 s even alone
    engine = PromptLengthEngine()
    longer, part = calls.capacity(engine, workload, SLO, update=False, **KWARGS)
    assert longer.max_concurrency == 0 and part.metrics["max_concurrency"] == 0.0
    assert "(cached)" not in part.warnings[0]


def curve_probe(best: int) -> Callable[[int], Mapping[str, float | None]]:
    """A custom probe: TTFT 0.1 s per level up to ``best``, 1 s above it. Every probe made here has the same
    ``__qualname__`` (``curve_probe.<locals>.probe``)."""

    def probe(level: int) -> Mapping[str, float | None]:
        return {"ttft_p99": 0.1 if level <= best else 1.0}

    return probe


def test_a_changed_custom_probe_is_not_answered_from_the_cache() -> None:
    engine = PromptLengthEngine()
    first, _ = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(5), knob="n_seq", **KWARGS)
    assert first.max_concurrency == 5
    slower, part = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(2), knob="n_seq", **KWARGS)
    assert slower.max_concurrency == 2
    assert "(cached)" not in part.warnings[0]


def test_a_custom_probe_is_cached_only_under_the_callers_cache_key() -> None:
    engine = PromptLengthEngine()
    calls.capacity(engine, None, SLO, update=False, probe=curve_probe(5), knob="n_seq", cache_key="v1", **KWARGS)
    again, _ = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(5), knob="n_seq", cache_key="v1",
                                 **KWARGS)
    assert again.cached and again.max_concurrency == 5
    renamed, _ = calls.capacity(engine, None, SLO, update=False, probe=curve_probe(2), knob="n_seq",
                                   cache_key="v2", **KWARGS)
    assert not renamed.cached and renamed.max_concurrency == 2
