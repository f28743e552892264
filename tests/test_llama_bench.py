"""llama-bench-style pp/tg and parallel sequences on the real in-process engine, and through the fixture."""

from __future__ import annotations

import json

import pytest

from pytest_llmperf.core.kv_cache import GIB
from pytest_llmperf.engines import create_engine
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.bench import bench, parallel
from pytest_llmperf.reports.scaling import render_scaling


@pytest.fixture(scope="module")
def engine():
    engine = create_engine("llama_cpp", {"model": "q4_k_m", "n_ctx": 256})
    yield engine
    engine.close()


def test_bench_measures_each_repetition(engine) -> None:
    result = bench(engine, n_prompt=32, n_gen=8, repetitions=3)
    assert len(result.pp) == 3 and len(result.tg) == 3
    assert all(value > 0 for value in (*result.pp, *result.tg))
    assert result.pp_tok_s == pytest.approx(sum(result.pp) / 3)
    assert result.pp_sd is not None and result.describe().startswith("pp32 ")
    only_tg = bench(engine, n_prompt=0, n_gen=4, repetitions=1)
    assert only_tg.pp_tok_s is None and only_tg.tg_tok_s is not None and only_tg.tg_sd is None
    with pytest.raises(LlmperfError, match="n_prompt must be a non-negative integer"):
        bench(engine, n_prompt=-1)


def test_bench_needs_an_in_process_engine() -> None:
    class Remote:
        backend = "openai"

    with pytest.raises(LlmperfError, match="need the llama_cpp backend"):
        bench(Remote())


def test_parallel_table_has_kv_cache_per_level_predicted_and_as_llama_cpp_allocated(engine) -> None:
    result = parallel(engine, "t", n_prompt=16, n_gen=4, n_parallel=(1, 2, 4))
    assert [row["concurrency"] for row in result.rows] == [1, 2, 4]
    for row in result.rows:
        level = int(row["concurrency"])
        # 8 layers x K and V x 512 values x 2 bytes, 256 cells per sequence after llama.cpp's padding.
        assert row["kv_cache_gib_predicted"] == pytest.approx(level * 256 * 8 * 2 * 512 * 2 / GIB)
        assert row["kv_cache_gib_measured"] == pytest.approx(row["kv_cache_gib_predicted"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / level)
        assert row["total_tok_s"] < row["prompt_tok_s"]  # prompt tokens go in batches, generated ones do not
    assert result.rows[0]["speedup"] == 1.0
    metrics = result.metrics(["total_tok_s", "efficiency"])
    assert set(metrics) == {"total_tok_s@c1", "total_tok_s@c2", "total_tok_s@c4", "efficiency@c2", "efficiency@c4"}
    table = "\n".join(render_scaling(result))
    assert "overall t/s" in table and "KV MiB (llama.cpp)" in table and "16.00" in table


TEST = """
import pytest

@pytest.mark.perf
@pytest.mark.perf_tolerance({"*_tok_s": "300%", "efficiency": "300%"})
def test_capacity(engine_factory, llmperf):
    engine = engine_factory("llama_cpp", model="q4_k_m", n_ctx=256)
    result = llmperf.bench(engine, n_prompt=32, n_gen=8, repetitions=2)
    assert result.tg_tok_s > 0
    table = llmperf.parallel(engine, n_prompt=16, n_gen=4, n_parallel=(1, 2))
    assert table.efficiency(2) > 0
"""


def test_bench_and_parallel_are_gated_and_tabulated(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cap=TEST)
    args = ("-m", "perf", "-p", "no:cacheprovider", "--llmperf-report", "out/report.json")
    recorded = pytester.runpytest(*args, "--update-baselines")
    assert recorded.ret == 0, recorded.stdout.str()
    baseline = json.loads((pytester.path / "baselines/test_cap/test_capacity.json").read_text())
    assert {"pp_tok_s", "tg_tok_s", "total_tok_s@c2", "efficiency@c2", "kv_cache_gib_measured@c2"} <= set(
        baseline["metrics"])
    checked = pytester.runpytest(*args)
    assert checked.ret == 0, checked.stdout.str()
    checked.stdout.fnmatch_lines(["*sequences*prompt t/s*overall t/s*KV MiB (model)*"])
    report = json.loads((pytester.path / "out/report.json").read_text())
    assert report["scaling"][0]["throughput"] == "total_tok_s"
