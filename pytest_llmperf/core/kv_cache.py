"""The KV-cache memory model: how many bytes the keys and values of a context take, from a model's own metadata.

``bytes = 2 x n_layers x n_kv_heads x head_dim x seq_len x bytes_per_element`` (2: keys and values). Grouped-query
attention is in ``n_kv_heads`` (8 KV heads of 64 query heads: 8x less than multi-head attention). The element size
is the KV dtype's: llama.cpp's ``type_k``/``type_v`` are ggml types, and a quantised type stores blocks (q8_0: 34
bytes per 32 values, q4_0: 18 per 32), so a row costs ``ggml_row_size(type, n_kv_heads x head_dim)``; vLLM's
``kv_cache_dtype`` is ``auto`` (the model's dtype) or an fp8 type (1 byte).

Shapes come from a GGUF's metadata (``<arch>.block_count``, ``<arch>.attention.head_count_kv``, ``key_length`` /
``value_length`` or ``embedding_length / head_count``) or a Hugging Face ``config.json`` (``num_hidden_layers``,
``num_key_value_heads``, ``head_dim`` or ``hidden_size / num_attention_heads``, as vLLM's ``ModelConfig`` reads
it). Pure arithmetic: no engine needed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmperf.errors import LlmperfError

#: ggml KV-cache types: (bytes per block, values per block), as ggml's type traits give them.
GGML_BLOCKS: dict[str, tuple[int, int]] = {
    "f32": (4, 1), "f16": (2, 1), "bf16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32), "q4_1": (20, 32),
    "q5_0": (22, 32), "q5_1": (24, 32), "iq4_nl": (18, 32),
}
#: vLLM ``kv_cache_dtype`` (and torch dtypes for ``auto``): bytes per element.
VLLM_DTYPES: dict[str, int] = {
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "float16": 2, "half": 2, "bfloat16": 2, "float32": 4,
    "float": 4,
}


def row_bytes(dtype: str, n_values: int) -> int:
    """Bytes of one row of ``n_values`` in ggml type ``dtype`` (``ggml_row_size``); a quantised type needs whole
    blocks."""
    if dtype not in GGML_BLOCKS:
        raise LlmperfError(f"unknown KV-cache type {dtype!r}: use one of {', '.join(GGML_BLOCKS)}")
    block_bytes, block_values = GGML_BLOCKS[dtype]
    if n_values % block_values:
        raise LlmperfError(f"a {dtype} row holds whole blocks of {block_values} values; {n_values} is not a multiple")
    return n_values // block_values * block_bytes


def element_bytes(dtype: str) -> float:
    """Bytes per element of a ggml type (fractional for block types) or a vLLM KV dtype."""
    if dtype in GGML_BLOCKS:
        block_bytes, block_values = GGML_BLOCKS[dtype]
        return block_bytes / block_values
    if dtype in VLLM_DTYPES:
        return float(VLLM_DTYPES[dtype])
    raise LlmperfError(f"unknown KV dtype {dtype!r}: llama.cpp types {', '.join(GGML_BLOCKS)}; vLLM "
                       f"{', '.join(VLLM_DTYPES)}")


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, dtype: str = "f16",
                   n_seq: int = 1) -> int:
    """``2 x n_layers x n_kv_heads x head_dim x seq_len x bytes`` for ``n_seq`` sequences (the textbook formula;
    block types by whole rows)."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim),
                        ("seq_len", seq_len), ("n_seq", n_seq)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LlmperfError(f"kv_cache_bytes: {name} must be a positive integer, got {value!r}")
    if dtype in GGML_BLOCKS:
        per_token = 2 * n_layers * row_bytes(dtype, n_kv_heads * head_dim)
    else:
        per_token = 2 * n_layers * n_kv_heads * head_dim * int(element_bytes(dtype))
    return per_token * seq_len * n_seq


@dataclass(frozen=True)
class KvShape:
    """What the KV cache of a model depends on: layers, KV heads and the key and value head sizes."""

    n_layers: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    source: str = ""
    dtype: str = "f16"  # the model's own dtype (vLLM's ``auto``)

    def bytes_per_token(self, type_k: str = "f16", type_v: str | None = None) -> int:
        """Keys and values of one token in every layer."""
        type_v = type_v or type_k
        if type_k in GGML_BLOCKS and type_v in GGML_BLOCKS:
            return self.n_layers * (row_bytes(type_k, self.n_kv_heads * self.head_dim_k)
                                    + row_bytes(type_v, self.n_kv_heads * self.head_dim_v))
        size_k, size_v = (_vllm_bytes(t, self.dtype) for t in (type_k, type_v))
        return self.n_layers * self.n_kv_heads * (self.head_dim_k * size_k + self.head_dim_v * size_v)

    def bytes(self, seq_len: int, n_seq: int = 1, type_k: str = "f16", type_v: str | None = None) -> int:
        """The cache of ``n_seq`` sequences of ``seq_len`` tokens."""
        return self.bytes_per_token(type_k, type_v) * seq_len * n_seq

    def to_json(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "n_kv_heads": self.n_kv_heads, "head_dim_k": self.head_dim_k,
                "head_dim_v": self.head_dim_v, "dtype": self.dtype, "source": self.source}


def _vllm_bytes(dtype: str, model_dtype: str) -> int:
    return int(element_bytes(model_dtype if dtype == "auto" else dtype))


def _positive(value: Any, key: str, source: str) -> int:
    if isinstance(value, (list, tuple)):  # per-layer KV heads (some GGUFs): the cache uses each layer's own
        value = max(value) if value else None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LlmperfError(f"{source}: {key} is {value!r}, not a positive integer")
    return value


def from_gguf(path: str | os.PathLike[str]) -> KvShape:
    """The KV shape from a GGUF's metadata (read with the ``gguf`` package; no weights are loaded)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as error:
        raise LlmperfError(f"{path}: not a readable GGUF file ({error})") from None
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("tokenizer.")}
    arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise LlmperfError(f"{path}: no general.architecture in its metadata")

    def key(name: str) -> Any:
        return fields.get(f"{arch}.{name}")

    source = f"GGUF {Path(path).name}"
    n_head = _positive(key("attention.head_count"), f"{arch}.attention.head_count", source)
    n_embd = _positive(key("embedding_length"), f"{arch}.embedding_length", source)
    n_kv = key("attention.head_count_kv")
    head_k = key("attention.key_length") or n_embd // n_head
    head_v = key("attention.value_length") or n_embd // n_head
    return KvShape(
        _positive(key("block_count"), f"{arch}.block_count", source),
        _positive(n_head if n_kv is None else n_kv, f"{arch}.attention.head_count_kv", source),
        _positive(head_k, f"{arch}.attention.key_length", source),
        _positive(head_v, f"{arch}.attention.value_length", source),
        source, "f16",
    )


def from_hf_config(config: str | os.PathLike[str] | Mapping[str, Any], tensor_parallel_size: int = 1) -> KvShape:
    """The KV shape vLLM derives from a Hugging Face ``config.json`` (a path or its parsed dict), per GPU under
    tensor parallelism (KV heads split across ranks, at least one each)."""
    if isinstance(config, Mapping):
        data, source = dict(config), "config.json"
    else:
        try:
            data = json.loads(Path(config).read_text())
        except (OSError, ValueError) as error:
            raise LlmperfError(f"{config}: not a readable config.json ({error})") from None
        source = str(config)
    data = {**data.get("text_config", {}), **data} if "text_config" in data else data
    n_head = _positive(data.get("num_attention_heads"), "num_attention_heads", source)
    head_dim = data.get("head_dim") or _positive(data.get("hidden_size"), "hidden_size", source) // n_head
    n_kv = _positive(data.get("num_key_value_heads", n_head), "num_key_value_heads", source)
    dtype = str(data.get("torch_dtype") or data.get("dtype") or "bfloat16")
    return KvShape(
        _positive(data.get("num_hidden_layers"), "num_hidden_layers", source),
        max(1, n_kv // tensor_parallel_size), _positive(head_dim, "head_dim", source),
        _positive(head_dim, "head_dim", source), source, dtype,
    )


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp: the cells it allocates for n_ctx and n_seq_max, and its own report of the buffer.

#: llama.cpp rounds the per-sequence context up to a multiple of this (``llama_context``: ``GGML_PAD(n_ctx, 256)``).
LLAMA_CTX_PAD = 256
_LLAMA_KV_LINE = re.compile(
    r"llama_kv_cache: +size = +(?P<mib>[0-9.]+) MiB \( *(?P<cells>\d+) cells, +(?P<layers>\d+) layers, "
    r"+(?P<seqs>\d+)/(?P<streams>\d+) seqs\), K \((?P<type_k>\w+)\): +(?P<k_mib>[0-9.]+) MiB, "
    r"V \((?P<type_v>\w+)\): +(?P<v_mib>[0-9.]+) MiB"
)


def llama_cpp_cells(n_ctx: int, n_seq_max: int = 1, kv_unified: bool = False) -> int:
    """Cells llama.cpp 0.3.36's vendored llama.cpp allocates, all streams together: a unified cache is one
    stream of ``n_ctx`` cells padded to 256; otherwise each of the ``n_seq_max`` sequences gets a stream of
    ``ceil(n_ctx / n_seq_max)`` cells padded to 256 (measured: n_ctx 1024 over 3 sequences -> 3 x 512 cells;
    2000 over 3 -> 3 x 768; tests/test_kv_cache.py checks this against llama.cpp's own log)."""
    if kv_unified or n_seq_max == 1:
        return _pad(n_ctx)
    return _pad(math.ceil(n_ctx / n_seq_max)) * n_seq_max


def _pad(n: int) -> int:
    return math.ceil(n / LLAMA_CTX_PAD) * LLAMA_CTX_PAD


@dataclass(frozen=True)
class LlamaKvReport:
    """llama.cpp's own line for the buffer it allocated: ``size = 25.50 MiB (768 cells, 8 layers, 4/4 seqs), K
    (q8_0): 12.75 MiB, V (q8_0): 12.75 MiB`` (cells per stream; ``4/4``: sequences / streams; MiB to 2
    decimals, so the size is known to +-0.005 MiB)."""

    mib: float
    cells: int  # per stream
    streams: int
    layers: int
    type_k: str
    type_v: str
    k_mib: float
    v_mib: float

    @property
    def bytes(self) -> float:
        return self.mib * 1024**2


def parse_llama_kv_log(text: str) -> LlamaKvReport | None:
    """The ``llama_kv_cache: size = ...`` line of llama.cpp's log, None when the log has none."""
    match = _LLAMA_KV_LINE.search(text)
    if match is None:
        return None
    return LlamaKvReport(float(match["mib"]), int(match["cells"]), int(match["streams"]), int(match["layers"]),
                         match["type_k"], match["type_v"], float(match["k_mib"]), float(match["v_mib"]))


# ----------------------------------------------------------------------------------------------------------------
# vLLM's paged view.

_VLLM_KV_LINE = re.compile(r"(?:GPU|CPU|XPU|TPU) KV cache size: (?P<tokens>[0-9,]+) tokens")
_VLLM_CONCURRENCY = re.compile(
    r"Maximum concurrency for (?P<length>[0-9,]+) tokens per request: (?P<concurrency>[0-9.]+)x"
)


@dataclass(frozen=True)
class PagedCapacity:
    """What vLLM's block manager makes of a memory budget: blocks of ``block_size`` tokens, the tokens they hold,
    and how many ``max_model_len`` requests fit at once (vLLM's two log lines)."""

    num_blocks: int
    block_size: int
    tokens: int
    max_model_len: int
    max_concurrency: float
    page_bytes: int  # one block of one layer

    def to_json(self) -> dict[str, Any]:
        return {"num_blocks": self.num_blocks, "block_size": self.block_size, "tokens": self.tokens,
                "max_model_len": self.max_model_len, "max_concurrency": self.max_concurrency,
                "page_bytes": self.page_bytes}


def vllm_paged_capacity(shape: KvShape, kv_budget_bytes: int, max_model_len: int, *, block_size: int = 16,
                        kv_cache_dtype: str = "auto") -> PagedCapacity:
    """vLLM v1's arithmetic (``vllm/v1/core/kv_cache_utils.py``) for one KV-cache group of full-attention layers:
    ``page = 2 x block_size x n_kv_heads x head_size x dtype_bytes`` per layer; ``num_blocks = budget // page //
    n_layers``; ``tokens = num_blocks x block_size``; ``max concurrency = num_blocks / ceil(max_model_len /
    block_size)``. ``kv_budget_bytes`` is what is left for the cache after weights and activations
    (``gpu_memory_utilization x total - used``)."""
    if kv_budget_bytes < 0 or max_model_len < 1 or block_size < 1:
        raise LlmperfError("vllm_paged_capacity: the budget must be >= 0 and max_model_len, block_size >= 1")
    size = _vllm_bytes(kv_cache_dtype, shape.dtype)
    page = block_size * shape.n_kv_heads * (shape.head_dim_k + shape.head_dim_v) * size
    num_blocks = kv_budget_bytes // page // shape.n_layers
    blocks_per_request = math.ceil(max_model_len / block_size)
    return PagedCapacity(num_blocks, block_size, num_blocks * block_size, max_model_len,
                         num_blocks / blocks_per_request, page)


def parse_vllm_kv_log(text: str) -> tuple[int, int, float] | None:
    """``(tokens, max_model_len, max_concurrency)`` from vLLM's startup log lines, None when absent."""
    tokens, concurrency = _VLLM_KV_LINE.search(text), _VLLM_CONCURRENCY.search(text)
    if tokens is None or concurrency is None:
        return None
    return (int(tokens["tokens"].replace(",", "")), int(concurrency["length"].replace(",", "")),
            float(concurrency["concurrency"]))
