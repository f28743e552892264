"""The shipped addition models as Hugging Face Llama checkpoints, for engines that load those (vLLM).

Built from the shipped GGUF, tensor by tensor, so both engines hold the same weights: ``model.safetensors``
(float32, written with numpy: no safetensors or torch needed), ``config.json`` (``LlamaForCausalLM``) and a
``tokenizer.json`` that tokenizes exactly as llama.cpp does for the GGUF (see :mod:`.addition`). Built once per
shipped file into the cache directory, atomically, under a file lock.

Two conventions differ between the files:

- Rotary embedding: the models were trained in llama.cpp's interleaved-pair convention (pairs ``(x[2i],
  x[2i+1])``); Hugging Face's Llama rotates halves (``rotate_half``). Hugging Face's GGUF converter permutes the
  q/k rows of each head (``w.reshape(n_head, 2, d/2, E).swapaxes(1, 2)``) to go one way; this module applies
  the inverse, so the two engines compute the same function.
- Tokenizer: a BPE with no merges and ``byte_fallback`` over the same 272 pieces, spaces replaced by ``▁``
  and no space prefix (the GGUF's ``add_space_prefix`` is false), BOS added by the post-processor.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf.assets import addition
from pytest_llmperf.errors import LlmperfError

if TYPE_CHECKING:
    import numpy as np

#: Bump when the written files change, so checkpoints built by an older version are not reused.
WRITER_VERSION = 1

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def hf_name(gguf_name: str) -> str:
    """``blk.1.attn_q.weight`` -> ``model.layers.1.self_attn.q_proj.weight``."""
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{suffix}"
    if stem in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[stem]}.{suffix}"
    raise LlmperfError(f"no Hugging Face Llama name for GGUF tensor {gguf_name!r}")


def unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection in llama.cpp's interleaved-pair order -> Hugging Face's half-split order (the
    inverse of the permutation Hugging Face's GGUF converter applies)."""
    rows = weight.shape[0]
    head_dim = rows // n_head
    if rows % n_head or head_dim % 2:
        raise LlmperfError(f"a rotary projection of {rows} rows does not split into {n_head} heads of even size")
    halves: np.ndarray = weight.reshape(n_head, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2)
    return halves.reshape(weight.shape)


def read_gguf_weights(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of an F16/F32 GGUF as float32, in numpy order (the reverse of ggml's), keyed by GGUF name."""
    import gguf
    import numpy as np

    weights: dict[str, np.ndarray] = {}
    for tensor in gguf.GGUFReader(str(path)).tensors:
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            raise LlmperfError(f"{path}: tensor {tensor.name} is {tensor.tensor_type.name}; only F16/F32 convert")
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
        weights[tensor.name] = np.asarray(tensor.data, dtype=np.float32).reshape(shape)
    return weights


def hf_weights(gguf_weights: dict[str, np.ndarray], config: addition.AdditionModelConfig) -> dict[str, np.ndarray]:
    """The GGUF's tensors under Hugging Face Llama names, q/k rows in Hugging Face's rotary order."""
    out = {}
    for name, array in gguf_weights.items():
        if ".attn_q." in name:
            array = unpermute_rotary(array, config.n_head)
        elif ".attn_k." in name:
            array = unpermute_rotary(array, config.n_head_kv)
        out[hf_name(name)] = array
    return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format (8-byte little-endian header length, JSON header, raw little-endian data) for
    float32 tensors."""
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        blob = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        shape = list(tensors[name].shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as file:
        file.write(len(encoded).to_bytes(8, "little"))
        file.write(encoded)
        for blob in blobs:
            file.write(blob)


def hf_config(config: addition.AdditionModelConfig) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.n_vocab,
        "hidden_size": config.n_embd,
        "intermediate_size": config.n_ff,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head_kv,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.rms_eps,
        "rope_theta": config.rope_base,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": addition.BOS_ID,
        "eos_token_id": addition.EOS_ID,
        "torch_dtype": "float32",
    }


def tokenizer_json() -> dict[str, Any]:
    """A ``tokenizers`` file that encodes as :func:`addition.encode` and decodes as :func:`addition.decode`."""
    special = [
        {"id": index, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for index, piece in enumerate(addition.VOCAB[: addition.EOS_ID + 1])
    ]
    bos = addition.VOCAB[addition.BOS_ID]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [addition.BOS_ID], "tokens": [bos]}},
        },
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": addition.VOCAB[addition.UNK_ID],
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": {piece: index for index, piece in enumerate(addition.VOCAB)},
            "merges": [],
        },
    }


def write_hf_checkpoint(gguf_path: Path, directory: Path, config: addition.AdditionModelConfig) -> None:
    """Write the checkpoint of ``gguf_path`` into ``directory`` (created; not atomic: see :func:`hf_model_dir`)."""
    directory.mkdir(parents=True)
    write_safetensors(directory / "model.safetensors", hf_weights(read_gguf_weights(gguf_path), config))
    files = {
        "config.json": hf_config(config),
        "generation_config.json": {"bos_token_id": addition.BOS_ID, "eos_token_id": addition.EOS_ID},
        "tokenizer.json": tokenizer_json(),
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": addition.VOCAB[addition.BOS_ID],
            "eos_token": addition.VOCAB[addition.EOS_ID],
            "unk_token": addition.VOCAB[addition.UNK_ID],
            "add_bos_token": True,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": config.context_length,
        },
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    }
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def hf_model_dir(checkpoint: str = "full") -> Path:
    """Directory of the shipped ``addition-<checkpoint>`` model as a Hugging Face checkpoint, built on first use
    (a directory named after the GGUF's sha256, so a retrained model gets a new one)."""
    from filelock import FileLock

    from pytest_llmperf.assets.model import TRAINED_CHECKPOINTS, TRAINED_DIR, cache_dir
    from pytest_llmperf.core.fingerprint import file_sha256

    if checkpoint not in TRAINED_CHECKPOINTS:
        choices = ", ".join(TRAINED_CHECKPOINTS)
        raise LlmperfError(f"unknown addition checkpoint {checkpoint!r}; choose one of {choices}")
    shipped = TRAINED_DIR / f"addition-{checkpoint}-f16.gguf"
    parent = cache_dir() / "models"
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / f"addition-{checkpoint}-{file_sha256(shipped)[:12]}-hf{WRITER_VERSION}"
    if (target / "config.json").exists():
        return target
    with FileLock(str(parent / f"{target.name}.lock")):
        if not (target / "config.json").exists():
            temporary = parent / f".{target.name}.{os.getpid()}.tmp"
            shutil.rmtree(temporary, ignore_errors=True)
            try:
                write_hf_checkpoint(shipped, temporary, addition.DEFAULT_CONFIG)
                os.replace(temporary, target)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
    return target
