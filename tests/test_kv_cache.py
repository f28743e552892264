"""The KV-cache memory model: the textbook figures, and llama.cpp's own report of the buffer it allocated."""

from __future__ import annotations

import pytest

from pytest_llmperf.core.kv_cache import (
    KvShape,
    from_gguf,
    from_hf_config,
    kv_cache_bytes,
    llama_cpp_cells,
    parse_llama_kv_log,
    parse_vllm_kv_log,
    row_bytes,
    vllm_paged_capacity,
)
from pytest_llmperf.errors import LlmperfError


def test_the_worked_example_is_two_gib_per_sequence():
    assert kv_cache_bytes(32, 32, 128, 4096, "f16") == 2_147_483_648


def test_grouped_query_attention_with_8_of_64_heads_is_8x_less():
    mha = kv_cache_bytes(80, 64, 128, 4096, "f16")
    gqa = kv_cache_bytes(80, 8, 128, 4096, "f16")
    assert mha == 8 * gqa


def test_block_types_cost_whole_blocks():
    assert row_bytes("q8_0", 512) == 16 * 34
    assert row_bytes("q4_0", 512) == 16 * 18
    assert kv_cache_bytes(1, 1, 64, 10, "q8_0", n_seq=3) == 2 * 2 * 34 * 10 * 3
    with pytest.raises(LlmperfError, match="whole blocks of 32"):
        row_bytes("q4_0", 48)
    with pytest.raises(LlmperfError, match="unknown KV-cache type 'q3_k'"):
        row_bytes("q3_k", 64)
    with pytest.raises(LlmperfError, match="seq_len must be a positive integer"):
        kv_cache_bytes(1, 1, 64, 0)


def test_hf_config_as_vllm_reads_it(tmp_path):
    config = {"num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192,
              "torch_dtype": "bfloat16"}
    shape = from_hf_config(config)
    assert (shape.n_layers, shape.n_kv_heads, shape.head_dim_k) == (80, 8, 128)
    assert shape.bytes(4096, type_k="auto") == kv_cache_bytes(80, 8, 128, 4096, "bfloat16")
    assert shape.bytes(4096, type_k="fp8") * 2 == shape.bytes(4096, type_k="auto")
    assert from_hf_config(config, tensor_parallel_size=4).n_kv_heads == 2
    assert from_hf_config({**config, "head_dim": 256}).head_dim_k == 256
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(LlmperfError, match=r"config\.json: not a readable config\.json"):
        from_hf_config(path)
    with pytest.raises(LlmperfError, match="num_hidden_layers is None"):
        from_hf_config({"num_attention_heads": 8, "hidden_size": 512})


def test_vllm_paged_view_and_its_log_lines():
    shape = KvShape(n_layers=32, n_kv_heads=8, head_dim_k=128, head_dim_v=128, dtype="bfloat16")
    capacity = vllm_paged_capacity(shape, 40 * 1024**3, 8192, block_size=16)
    assert capacity.page_bytes == 2 * 16 * 8 * 128 * 2  # keys and values of one block in one layer
    assert capacity.num_blocks == 40 * 1024**3 // capacity.page_bytes // 32
    assert capacity.tokens == capacity.num_blocks * 16 == 327_680
    assert capacity.max_concurrency == pytest.approx(327_680 / 8192)
    fp8 = vllm_paged_capacity(shape, 40 * 1024**3, 8192, kv_cache_dtype="fp8")
    assert fp8.tokens == 2 * capacity.tokens
    log = ("INFO 12-01 kv_cache_utils.py:716] GPU KV cache size: 327,680 tokens\n"
           "INFO 12-01 kv_cache_utils.py:720] Maximum concurrency for 8,192 tokens per request: 40.00x\n")
    tokens, length, concurrency = parse_vllm_kv_log(log)
    assert (tokens, length) == (capacity.tokens, capacity.max_model_len)
    assert concurrency == pytest.approx(capacity.max_concurrency, abs=0.005)
    assert parse_vllm_kv_log("no such lines") is None


def test_llama_cpp_cells_pad_each_stream_to_256():
    assert llama_cpp_cells(2048) == 2048
    assert llama_cpp_cells(1000) == 1024
    assert llama_cpp_cells(1024, 3) == 3 * 512
    assert llama_cpp_cells(2000, 3) == 3 * 768
    assert llama_cpp_cells(2000, 3, kv_unified=True) == 2048


def test_parse_llama_kv_log_reads_the_size_line():
    line = ("llama_kv_cache: size =   25.50 MiB (   768 cells,   8 layers,  4/4 seqs), K (q8_0):   12.75 MiB, "
            "V (q8_0):   12.75 MiB\n")
    report = parse_llama_kv_log("other\n" + line)
    assert (report.mib, report.cells, report.streams, report.type_k) == (25.5, 768, 4, "q8_0")
    assert parse_llama_kv_log("nothing") is None


@pytest.mark.parametrize(
    ("model", "n_ctx", "n_seq", "cache_type"),
    [("f16", 2048, 1, "f16"), ("q4_k_m", 1000, 1, "f16"), ("f16", 3000, 4, "q8_0"), ("q4_k_m", 2000, 3, "q4_0"),
     ("addition-partial-f16", 1024, 2, "f16")],
)
def test_model_matches_llama_cpps_own_kv_buffer(model, n_ctx, n_seq, cache_type):
    """The model from the GGUF's metadata against the size llama.cpp logs when it allocates the cache: exact,
    once its cells are padded (``llama_cpp_cells``); the log's MiB have 2 decimals."""
    pytest.importorskip("llama_cpp")
    from pytest_llmperf.engines import create_engine
    from pytest_llmperf.engines.llama_cpp_bench import BenchContext

    engine = create_engine("llama_cpp", {"model": model, "n_ctx": 256, "type_k": cache_type,
                                         "type_v": cache_type, "flash_attn": cache_type != "f16"})
    try:
        with BenchContext(engine._llm, n_ctx, n_seq) as context:
            report = context.kv_report
        shape = from_gguf(engine.model_path)
        cells = llama_cpp_cells(n_ctx, n_seq)
        predicted = shape.bytes(cells, type_k=cache_type)
        assert report is not None and report.cells * report.streams == cells
        assert report.type_k == cache_type and report.layers == shape.n_layers
        assert abs(predicted / 1024**2 - report.mib) <= 0.005 + 1e-9  # 10.125 MiB prints as 10.12
    finally:
        engine.close()


def test_from_gguf_names_a_bad_file(tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"not a gguf")
    with pytest.raises(LlmperfError, match=r"bad\.gguf: not a readable GGUF"):
        from_gguf(path)
