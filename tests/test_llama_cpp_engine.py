"""The llama_cpp backend on the real embedded model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_llmperf.core.workload import Request, Workload
from pytest_llmperf.engines import create_engine
from pytest_llmperf.errors import EngineError
from pytest_llmperf.measure.runner import run_workload


@pytest.fixture(scope="module")
def engine():
    built = create_engine("llama_cpp", {"model": "q4_k_m", "n_threads": 2, "n_ctx": 512})
    yield built
    built.close()


def test_every_request_generates_exactly_n_predict_tokens(engine) -> None:
    prompts = [engine.make_prompt(seed, 24) for seed in range(3)]
    records = engine.run([Request(prompt, max_tokens=16) for prompt in prompts])
    assert [r.prompt_tokens for r in records] == [24, 24, 24]
    assert [r.output_tokens for r in records] == [16, 16, 16]
    # One streamed chunk per token with this vocabulary: TTFT and 15 gaps are real timings.
    assert all(len(r.chunk_times) == 16 for r in records)
    assert all(0 < r.ttft <= r.e2e for r in records)


def test_prompts_are_unique_and_reproducible(engine) -> None:
    assert engine.make_prompt(1, 32) == engine.make_prompt(1, 32)
    prompts = {tuple(engine.make_prompt(seed, 32)) for seed in range(50)}
    assert len(prompts) == 50
    assert len({p[1] for p in prompts}) > 1  # they differ right after BOS, so no prefix is shared


def test_kv_cache_is_reset_between_requests(engine) -> None:
    prompt = engine.make_prompt(7, 200)
    first, second = engine.run([Request(prompt, 2), Request(prompt, 2)])
    # A reused prefix would make the repeated prompt's TTFT several times shorter.
    assert second.ttft > first.ttft * 0.4


def test_run_workload_reports_repetitions(engine) -> None:
    result = run_workload(engine, Workload(n_prompt=16, n_predict=8, requests=2, warmup=1, repetitions=2))
    assert len(result.samples["completion_tok_s"]) == 2
    assert result.completion_tok_s > 0
    assert result.e2e_p99 >= result.e2e_p50
    assert result.rss_peak_gib is not None
    with pytest.raises(AttributeError, match="no metric 'speed'"):
        _ = result.speed


def test_prompts_file_prompts_are_tagged_unique(engine, tmp_path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "hello world"}\n')
    result = run_workload(engine, Workload(n_predict=4, requests=2, warmup=0, repetitions=1, prompts_file=str(path)))
    assert result.completion_tok_s > 0


def test_unknown_knob_is_named_with_suggestions() -> None:
    with pytest.raises(EngineError, match=r"unknown llama_cpp engine knob 'n_thread' \(did you mean 'n_threads'"):
        create_engine("llama_cpp", {"n_thread": 2})


def test_missing_model_file_is_named(tmp_path) -> None:
    with pytest.raises(EngineError, match=r"model file not found: .*missing\.gguf"):
        create_engine("llama_cpp", {"model": str(tmp_path / "missing.gguf")})


def test_unknown_backend_is_named() -> None:
    with pytest.raises(EngineError, match="unknown engine backend 'tgi'"):
        create_engine("tgi", {})


def test_prompt_longer_than_context_is_an_error(engine) -> None:
    with pytest.raises(EngineError, match="do not fit n_ctx=512"):
        engine.run([Request(engine.make_prompt(0, 500), max_tokens=100)])


def test_user_logits_processor_runs_and_eos_stays_suppressed() -> None:
    from llama_cpp import LogitsProcessorList

    calls = []

    def push_eos(input_ids, scores):
        calls.append(len(input_ids))
        scores[2] = 1e6  # would end every request at once
        return scores

    engine = create_engine(
        "llama_cpp", {"model": "q4_k_m", "n_ctx": 256, "logits_processor": LogitsProcessorList([push_eos])}
    )
    try:
        (record,) = engine.run([Request(engine.make_prompt(0, 16), max_tokens=12)])
    finally:
        engine.close()
    assert len(calls) == 12  # the user's processor saw every token
    assert record.output_tokens == 12  # and EOS suppression, applied after it, still held


def test_warm_up_builds_the_model_on_an_empty_cache(tmp_path: Path) -> None:
    # warm_up once built the model inside its silenced block, and the quantiser silences output too: the
    # (non-reentrant) lock deadlocked the first perf test on a machine with an empty model cache.
    code = "from pytest_llmperf.engines.llama_cpp import warm_up; warm_up(); print('warm')"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LLMPERF_CACHE_DIR": str(tmp_path)},
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.stdout.strip() == "warm", result.stderr[-2000:]
    assert list(tmp_path.rglob("*q4_k_m*.gguf"))
