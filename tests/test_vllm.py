"""The vllm backend against a fake ``vllm`` shaped like 0.33.0's API, and the real thing where it can run."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import create_engine
from pytest_llmperf.errors import EngineError, EngineUnavailable
from pytest_llmperf.measure.runner import run_workload
from tests import fake_vllm


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> object:
    return fake_vllm.install(monkeypatch)


def test_knobs_go_to_engine_args_and_sampling(vllm: object) -> None:
    engine = create_engine(
        "vllm",
        {"model": "meta-llama/Llama-3.1-8B", "max_num_seqs": 64, "enable_chunked_prefill": True, "top_p": 0.9},
    )
    llm = fake_vllm.LLM.instances[-1]
    assert llm.model == "meta-llama/Llama-3.1-8B"
    assert llm.kwargs == {"disable_log_stats": False, "max_num_seqs": 64, "enable_chunked_prefill": True}
    description = engine.describe()
    assert description["engine_config"]["max_num_seqs"] == 64
    assert description["sampling"] == {"temperature": 0.0, "top_p": 0.9}
    assert description["model"] == {"name": "meta-llama/Llama-3.1-8B"}


def test_unknown_knob_is_named_with_a_suggestion(vllm: object) -> None:
    with pytest.raises(EngineError, match=r"unknown vllm engine knob 'max_num_seq' \(did you mean 'max_num_seqs'"):
        create_engine("vllm", {"model": "m", "max_num_seq": 8})


@pytest.mark.parametrize("model", ["q4_k_m", "addition-full-f16", "/models/tiny.gguf"])
def test_a_gguf_model_is_not_a_vllm_model(vllm: object, model: str) -> None:
    with pytest.raises(EngineError, match="a GGUF model for llama_cpp; vLLM needs a Hugging Face model directory, "
                                          "or one of the shipped models addition-full, addition-partial"):
        create_engine("vllm", {"model": model})


def test_vllm_without_a_model_is_unavailable_and_says_how_to_give_one(vllm: object) -> None:
    with pytest.raises(EngineUnavailable, match=r"backend 'vllm' needs a model .*--llmperf-model vllm=DIR"):
        create_engine("vllm", {"model": None})


def test_requests_force_full_length_and_timings_come_from_request_stats(vllm: object) -> None:
    engine = create_engine("vllm", {"model": "m", "max_num_seqs": 8})
    result = run_workload(engine, Workload(n_prompt=16, n_predict=32, requests=4, warmup=0, repetitions=1))
    llm = fake_vllm.LLM.instances[-1]
    (prompts, params), *_ = llm.state["calls"]
    assert len(prompts) == 1 and len(prompts[0]["prompt_token_ids"]) == 16  # concurrency 1: one at a time
    assert prompts[0]["prompt_token_ids"][0] == 1  # BOS, then non-special tokens
    assert all(token > 2 for token in prompts[0]["prompt_token_ids"][1:])
    assert (params[0].max_tokens, params[0].min_tokens, params[0].ignore_eos, params[0].temperature) == (
        32,
        32,
        True,
        0.0,
    )
    assert result.ttft_p50 == pytest.approx(0.010)  # first_token_latency
    assert result.e2e_p50 == pytest.approx(0.010 + 0.002 * 31)  # TTFT + last_token_ts - first_token_ts
    assert result.tpot_p50 == pytest.approx(0.002)
    assert result.itl_p50 is None  # generate() does not stream: no inter-token gaps, not a zero


def test_concurrency_batches_requests_into_one_generate_call(vllm: object) -> None:
    engine = create_engine("vllm", {"model": "m"})
    engine.run([fake_vllm_request(8)] * 5, concurrency=4)
    assert [len(prompts) for prompts, _ in fake_vllm.LLM.instances[-1].state["calls"]] == [4, 1]


def fake_vllm_request(tokens: int):  # type: ignore[no-untyped-def]
    from pytest_llmperf.core.workload import Request

    return Request(prompt=[1, 5, 6], max_tokens=tokens)


def test_close_shuts_the_engine_core_and_frees_memory(vllm: object) -> None:
    engine = create_engine("vllm", {"model": "m"})
    llm = fake_vllm.LLM.instances[-1]
    engine.close()
    assert llm.state["shutdown"] is True
    assert sys.modules["vllm.distributed"].cleaned == 1  # type: ignore[attr-defined]
    engine.close()  # twice is harmless
    assert sys.modules["vllm.distributed"].cleaned == 1  # type: ignore[attr-defined]


def _gpu_present() -> bool:
    from pytest_llmperf.core.hardware import probe_gpus

    return bool(probe_gpus()[0])


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not _gpu_present(),
    reason="needs vLLM and an NVIDIA GPU (set LLMPERF_VLLM_MODEL to a local model directory)",
)
def test_real_vllm_decodes_a_workload() -> None:
    import os

    model = os.environ.get("LLMPERF_VLLM_MODEL")
    if not model:
        pytest.skip("LLMPERF_VLLM_MODEL is not set (no model hub is reachable: point it at a local model)")
    engine = create_engine("vllm", {"model": model, "gpu_memory_utilization": 0.5, "max_num_seqs": 8})
    try:
        result = run_workload(engine, Workload(n_prompt=64, n_predict=32, requests=8, repetitions=1, concurrency=8))
        assert result.completion_tok_s and result.completion_tok_s > 0
        assert result.ttft_p50 is not None
    finally:
        engine.close()


def test_the_root_cause_is_the_workers_error_not_the_wrappers_after_it() -> None:
    """What vLLM 0.32's CPU build printed when gpu_memory_utilization asked for more host memory than was free
    (trimmed): the worker's ValueError, then the EngineCore's and the caller's wrappers."""
    from pytest_llmperf.engines.vllm import root_cause

    log = (
        "(VllmWorker-0 pid=2150) ERROR 12-06 23:15:20 [multiproc_executor.py:953]     raise ValueError(\n"
        "(VllmWorker-0 pid=2150) ERROR 12-06 23:15:20 [multiproc_executor.py:953] ValueError: Available memory on "
        "node 0 (21.93/23.54 GiB) on startup is less than desired CPU memory utilization (0.999, 23.52 GiB).\n"
        "(EngineCore pid=2136) ERROR 12-06 23:15:22 [core.py:1510] Exception: WorkerProc initialization failed due "
        "to an exception in a background process. See stack trace for root cause.\n"
        "Exception: WorkerProc initialization failed due to an exception in a background process. See stack trace "
        "for root cause.\n"
    )
    assert root_cause(log) == ("ValueError: Available memory on node 0 (21.93/23.54 GiB) on startup is less than "
                               "desired CPU memory utilization (0.999, 23.52 GiB).")
    assert root_cause("INFO all fine\n") is None
