"""llama.cpp's own C++ ``llama-server`` through the ``llama_server`` preset, for real: built from the vendored
llama.cpp of the installed llama-cpp-python (``python benchmarks/llama_tools.py``; ``.ci/run`` builds it), launched,
loaded, scored and stopped. Skipped, with the reason, where it was not built.

Found running it: llama-server closes a connection after a streamed answer, so the preset's load generator opens
one per request (``keep_alive=False``; with reuse, the fifth request of a run failed to send).
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import create_engine
from pytest_llmperf.engines.server import llama_tool
from pytest_llmperf.errors import EngineUnavailable, LlmperfError
from pytest_llmperf.measure.accuracy import evaluate
from pytest_llmperf.measure.runner import run_workload


def _server() -> str:
    try:
        return llama_tool("llama-server")
    except EngineUnavailable as missing:
        pytest.skip(str(missing))


def test_llama_server_preset_launches_serves_scores_like_in_process_and_leaves_no_process() -> None:
    import psutil

    _server()
    server = create_engine("openai", {"launch": "llama_server", "model": "addition-full-f16",
                                      "server_args": ["--threads", "1", "--ctx-size", "1024", "--parallel", "4"]})
    tree: list[Any] = []
    try:
        tree = [psutil.Process(server.host_memory_pids()[0])]
        result = run_workload(server, Workload(n_prompt=16, n_predict=16, requests=8, concurrency=4, repetitions=1))
        assert result.metrics["completion_tok_s"] and result.metrics["ttft_p50"]
        assert not [w for w in result.warnings if "fewer than n_predict" in w], result.warnings
        assert result.metrics["rss_peak_gib"] is not None and result.metrics["rss_peak_gib"] > 0
        tasks = ["llmperf_addition"]
        served = evaluate(server.lm_eval_model(), tasks, limit=50)
        # llama-server echoes no prompt log-probabilities: a log-likelihood task fails, saying so.
        with pytest.raises(LlmperfError, match=r"llama-server does not \(it echoes no prompt log-probabilities\)"):
            evaluate(server.lm_eval_model(), ["llmperf_addition_mc"], limit=5)
        llama = create_engine("llama_cpp", {"model": "addition-full-f16", "n_ctx": 256, "n_threads": 1})
        try:
            in_process = evaluate(llama.lm_eval_model(), tasks, limit=50)
        finally:
            llama.close()
        assert served.metrics == in_process.metrics
        assert served.metrics["llmperf_addition.exact_match"] > 0.9
    finally:
        server.close()
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, alive
