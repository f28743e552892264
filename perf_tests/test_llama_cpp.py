"""The project's own perf suite: the embedded tiny Llama on llama.cpp, CPU-only, 2 threads.

Each test measures, then checks the gated metrics against its file under ``baselines/``. Run it with
``pytest -m perf``; accept new numbers with ``pytest -m perf --update-baselines``.
"""

from __future__ import annotations

import pytest

from pytest_llmperf import Workload

# Short enough for a 2-core machine, long enough that decoding dominates: 4 requests x 3 repetitions.
DECODE = Workload(n_prompt=128, n_predict=64, requests=4, warmup=1, repetitions=3)
PREFILL = Workload(n_prompt=512, n_predict=4, requests=4, warmup=1, repetitions=3)


@pytest.mark.perf
@pytest.mark.parametrize("variant", ["f16", "q8_0", "q4_k_m"])
def test_decode(engine_factory, llmperf, variant):
    """Decode throughput, p99 end-to-end latency, TTFT, TPOT and host memory, per quantisation."""
    engine = engine_factory("llama_cpp", model=variant, n_threads=2)
    result = llmperf.measure(engine, DECODE)
    # Service-level objectives hold on any machine, whatever the baseline says.
    assert result.e2e_p99 < 5.0
    assert result.ttft_p99 < 1.0


@pytest.mark.perf
@pytest.mark.perf_tolerance(ttft_p50="50%")
def test_prefill_ttft(engine_factory, llmperf):
    """Time to first token on a long prompt: prefill speed."""
    engine = engine_factory("llama_cpp", model="f16", n_threads=2)
    result = llmperf.measure(engine, PREFILL, gate=("ttft_p50", "ttft_p99", "prompt_tok_s", "rss_peak_gib"))
    assert result.ttft_p50 < 2.0
