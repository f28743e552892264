"""GPU perf tests to start from: vLLM decode and accuracy, and a torch engine that needs only torch on the GPU.

Each test is marked ``gpu(...)``: on a machine without the GPU it is skipped with the reason, and in strict mode
(``$CI`` or ``--llmperf-strict``) or with ``--llmperf-require-gpu`` it fails, so a GPU runner that lost its GPU
cannot pass. The GPU check comes first (the marker is checked before the test starts). The vLLM tests take their
model from the run (``--llmperf-model vllm=DIR`` or a ``vllm = DIR`` line of the ini key ``llmperf_model``: a local
Hugging Face model directory, nothing is downloaded); without vLLM or without that model they are skipped with the
reason, and fail in strict mode like a missing GPU: a GPU runner whose vLLM tests cannot run does not pass. A
runner that gates only the torch engine deselects them (``-k "not vllm"``).

No baseline is committed for these tests: they were written on machines with no GPU, where vLLM cannot even be
installed. The first run on a GPU records them (``pytest -m perf perf_tests/test_gpu.py --update-baselines``);
strict mode fails until then. ``benchmarks/gpu_check.py`` records and checks the torch test on a GPU machine.
"""

from __future__ import annotations

import pytest

from pytest_llmperf import Workload

# vLLM's scheduler knobs, the ones a tuning study sweeps: up to 64 sequences per step, 8192 tokens per step,
# long prefills split into chunks that share steps with decodes.
VLLM_KNOBS = {"max_num_seqs": 64, "max_num_batched_tokens": 8192, "enable_chunked_prefill": True,
              "gpu_memory_utilization": 0.8}
# The seed's quick decode shape (128 prompt / 1024 generated tokens), 64 requests in flight at once.
VLLM_DECODE = Workload(n_prompt=128, n_predict=1024, requests=64, concurrency=64, warmup=8, repetitions=3,
                       max_repetitions=10, max_seconds=300)
# 32 sums decoded as one batch: 16 prompt + 64 generated tokens, within the model's 256 positions. The warmup
# is a whole batch, so CUDA's and cuBLAS's first-call costs for that shape are paid before measuring.
TORCH_DECODE = Workload(n_prompt=16, n_predict=64, requests=32, concurrency=32, warmup=32, repetitions=5,
                        max_repetitions=20, max_seconds=30)


@pytest.mark.perf
@pytest.mark.gpu(count=1, min_vram_gib=24)
def test_vllm_decode(engine_factory, llmperf):
    """Decode throughput and latency on vLLM with its scheduler knobs, VRAM and energy from NVML
    (``track_gpu=True`` gates ``mem_max_gib`` and ``mem_mean_gib`` besides the default gate). Never run: no
    baseline is recorded (no GPU where it was written)."""
    engine = engine_factory("vllm", **VLLM_KNOBS)
    result = llmperf.measure(engine, VLLM_DECODE, track_gpu=True)
    # vLLM reserves gpu_memory_utilization of the device at start-up: device-level memory shows the reservation.
    assert result.mem_max_gib is not None
    assert result.ttft_p99 is not None and result.ttft_p99 < 10.0


@pytest.mark.perf
@pytest.mark.gpu(count=1, min_vram_gib=24)
def test_vllm_accuracy(engine_factory, lm_eval_scorer):
    """Accuracy on vLLM through lm-eval's evaluator, scored with the engine's own ``vllm.LLM``
    (``engines/vllm_lm.py``); every ``<task>.<metric>`` is gated. Never run: no baseline is recorded."""
    engine = engine_factory("vllm", **VLLM_KNOBS)
    scores = lm_eval_scorer(engine, ["llmperf_arc", "llmperf_hellaswag"])
    assert set(scores.metrics) >= {"llmperf_arc.acc", "llmperf_hellaswag.acc"}


@pytest.fixture(scope="module")
def torch_engine():
    """The trained addition model's torch forward on the GPU (``perf_tests/torch_engine.py``), closed at the end."""
    pytest.importorskip("torch", reason="the torch engine needs torch with CUDA")
    pytest.importorskip("gguf", reason="the torch engine reads the shipped GGUF with gguf (pip install gguf)")
    from torch_engine import TorchAdditionEngine

    engine = TorchAdditionEngine("addition-full-f16", device="cuda", dtype="float32")
    yield engine
    engine.close()


@pytest.mark.perf
@pytest.mark.gpu(count=1)
# Device-level memory (the CUDA context and torch's cached blocks) is gated within 64 MiB: a few KiB of weights
# and activations cannot move it more unless something changed. Energy per token is noisy (NVML's counter
# and a decode of under a second): 30%.
@pytest.mark.perf_tolerance({"*_tok_s": "20%", "tpot_*": "25%", "mem_max_gib": "64MiB", "gpu_j_per_token": "30%"})
def test_torch_addition_decode(torch_engine, llmperf):
    """The whole GPU gate on an engine that needs only torch: decode throughput and TPOT from a batched greedy
    decode, device-level VRAM and energy per token from NVML. Per-process memory is reported, not gated (NVML
    lists host PIDs: inside a container it is unavailable). Its baseline is recorded on the GPU that runs it
    (``benchmarks/gpu_check.py``): none could be recorded where it was written."""
    assert torch_engine.answer(12, 34) == "46"  # the weights loaded right: the model adds
    result = llmperf.measure(
        torch_engine, TORCH_DECODE, track_gpu=True,
        gate=["completion_tok_s", "tpot_p50", "mem_max_gib", "gpu_j_per_token"],
    )
    assert result.completion_tok_s is not None and result.completion_tok_s > 0
    assert result.mem_max_gib is not None and result.mem_max_gib > 0
