"""Two-digit addition: the task, tokenizer and GGUF writer of the trained tiny models.

The shipped addition models (``pytest_llmperf/models/addition-*.gguf``) are small Llamas trained from scratch
on ``"a+b=c"`` for ``a, b`` in ``0..99`` by ``tools/train_addition_model.py``. Training and the plugin share
this module, so the held-out questions, the token ids and the file layout cannot drift apart. It imports
neither torch nor (at module level) numpy or gguf.

Vocabulary (SentencePiece-style, ``tokenizer.ggml.model = "llama"``): ids 0-2 ``<unk>`` ``<s>`` ``</s>``,
3-258 the byte tokens ``<0x00>``..``<0xFF>`` that llama.cpp requires, then ``0``-``9``, ``+``, ``=`` and
``▁`` as NORMAL tokens: 272 in all. With ``add_space_prefix`` false and BOS added, :func:`encode` returns
exactly what llama.cpp's tokenizer returns for the written GGUF (no piece is longer than one character, so
SPM never merges; a character outside the vocabulary falls back to its UTF-8 byte tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.assets.shape import LlamaShape
from pytest_llmperf.errors import LlmperfError

if TYPE_CHECKING:
    import numpy as np

#: Seed of the held-out split; changing it changes which questions are "never seen in training".
HOLDOUT_SEED = 20261101
#: Number of held-out (a, b) pairs out of the 10,000.
N_HELDOUT = 2000

UNK_ID = 0
BOS_ID = 1
EOS_ID = 2
_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_N_BYTE_TOKENS = 256
#: Single-character NORMAL pieces after the byte tokens, in id order.
NORMAL_PIECES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+", "=", "\u2581")
#: The full token list, index = id.
VOCAB: tuple[str, ...] = (
    *_SPECIAL_TOKENS,
    *(f"<0x{byte:02X}>" for byte in range(_N_BYTE_TOKENS)),
    *NORMAL_PIECES,
)
N_VOCAB = len(VOCAB)
_FIRST_BYTE_ID = len(_SPECIAL_TOKENS)
_FIRST_NORMAL_ID = _FIRST_BYTE_ID + _N_BYTE_TOKENS
_PIECE_IDS = {piece: _FIRST_NORMAL_ID + index for index, piece in enumerate(NORMAL_PIECES)}


#: The addition model's shape (``tools/train_addition_model.py`` trains it; hf_checkpoint converts it).
AdditionModelConfig = LlamaShape
DEFAULT_CONFIG = LlamaShape(n_vocab=N_VOCAB, n_embd=256, n_layer=2, n_head=4, n_head_kv=4, n_ff=512, context_length=256)


# --- the task ------------------------------------------------------------------------------------------------


def prompt(a: int, b: int) -> str:
    """The question text the model completes: ``"a+b="``."""
    return f"{a}+{b}="


def answer(a: int, b: int) -> str:
    """The expected completion (before EOS): the decimal sum."""
    return str(a + b)


def all_pairs() -> list[tuple[int, int]]:
    return [(a, b) for a in range(100) for b in range(100)]


def heldout_pairs() -> list[tuple[int, int]]:
    """The ``N_HELDOUT`` pairs never trained on, chosen with ``HOLDOUT_SEED``, in ascending order."""
    import numpy as np

    chosen = np.random.default_rng(HOLDOUT_SEED).permutation(100 * 100)[:N_HELDOUT]
    return [(int(index) // 100, int(index) % 100) for index in sorted(chosen.tolist())]


def train_pairs() -> list[tuple[int, int]]:
    """The other 8,000 pairs, in ascending order."""
    held = set(heldout_pairs())
    return [pair for pair in all_pairs() if pair not in held]


# --- the tokenizer -------------------------------------------------------------------------------------------


def encode(text: str, add_bos: bool = True) -> list[int]:
    """Token ids of ``text`` as llama.cpp tokenizes it for the addition GGUF (BOS first unless ``add_bos``).

    Spaces become ``▁``; characters outside the vocabulary become their UTF-8 byte tokens. Special-token text
    such as ``"</s>"`` is not parsed (llama.cpp's ``special=False``).
    """
    ids = [BOS_ID] if add_bos else []
    for char in text.replace(" ", "\u2581"):
        piece_id = _PIECE_IDS.get(char)
        if piece_id is not None:
            ids.append(piece_id)
        else:
            ids.extend(_FIRST_BYTE_ID + byte for byte in char.encode("utf-8"))
    return ids


def decode(ids: list[int]) -> str:
    """Text of ``ids``: special tokens dropped, byte tokens reassembled, ``▁`` back to a space."""
    out = bytearray()
    for token in ids:
        if not 0 <= token < N_VOCAB:
            raise LlmperfError(f"token id {token} is outside the addition vocabulary (0..{N_VOCAB - 1})")
        if token < _FIRST_BYTE_ID:
            continue
        if token < _FIRST_NORMAL_ID:
            out.append(token - _FIRST_BYTE_ID)
        else:
            out.extend(VOCAB[token].replace("\u2581", " ").encode("utf-8"))
    return out.decode("utf-8", errors="replace")


def token_types() -> list[int]:
    """GGUF token types of :data:`VOCAB`: UNKNOWN, CONTROL x2, BYTE x256, NORMAL."""
    import gguf

    types = [int(gguf.TokenType.UNKNOWN)] + [int(gguf.TokenType.CONTROL)] * (len(_SPECIAL_TOKENS) - 1)
    types += [int(gguf.TokenType.BYTE)] * _N_BYTE_TOKENS
    types += [int(gguf.TokenType.NORMAL)] * len(NORMAL_PIECES)
    return types


# --- the GGUF file -------------------------------------------------------------------------------------------


def tensor_shapes(config: AdditionModelConfig = DEFAULT_CONFIG) -> dict[str, tuple[int, ...]]:
    """numpy shapes (the reverse of ggml's) of every tensor the GGUF holds, in file order."""
    kv_dim = config.head_dim * config.n_head_kv
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (config.n_vocab, config.n_embd)}
    for block in range(config.n_layer):
        prefix = f"blk.{block}"
        shapes[f"{prefix}.attn_norm.weight"] = (config.n_embd,)
        shapes[f"{prefix}.attn_q.weight"] = (config.n_embd, config.n_embd)
        shapes[f"{prefix}.attn_k.weight"] = (kv_dim, config.n_embd)
        shapes[f"{prefix}.attn_v.weight"] = (kv_dim, config.n_embd)
        shapes[f"{prefix}.attn_output.weight"] = (config.n_embd, config.n_embd)
        shapes[f"{prefix}.ffn_norm.weight"] = (config.n_embd,)
        shapes[f"{prefix}.ffn_gate.weight"] = (config.n_ff, config.n_embd)
        shapes[f"{prefix}.ffn_up.weight"] = (config.n_ff, config.n_embd)
        shapes[f"{prefix}.ffn_down.weight"] = (config.n_embd, config.n_ff)
    shapes["output_norm.weight"] = (config.n_embd,)
    shapes["output.weight"] = (config.n_vocab, config.n_embd)
    return shapes


def write_gguf(
    path: Path | str,
    weights: Mapping[str, np.ndarray],
    config: AdditionModelConfig = DEFAULT_CONFIG,
    name: str = "llmperf-addition",
    f16: bool = True,
) -> None:
    """Write a llama-architecture GGUF of ``weights`` (keyed by GGUF tensor name, numpy shapes as in
    :func:`tensor_shapes`) with the addition tokenizer. 2-D weights are stored F16 when ``f16``, else F32;
    norm weights are always F32. Rotary q/k rows are written as given: train with llama.cpp's
    interleaved-pair rotary convention. Not atomic.
    """
    import gguf
    import numpy as np

    if config.n_vocab != N_VOCAB:
        raise LlmperfError(f"the addition tokenizer has {N_VOCAB} tokens, config says n_vocab={config.n_vocab}")
    expected = tensor_shapes(config)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise LlmperfError(f"addition GGUF weights: missing {missing}, unexpected {unexpected}")
    for tensor_name, shape in expected.items():
        if tuple(weights[tensor_name].shape) != shape:
            raise LlmperfError(f"{tensor_name} has shape {tuple(weights[tensor_name].shape)}, expected {shape}")

    from pytest_llmperf.assets.model import write_llama_metadata

    writer = gguf.GGUFWriter(str(path), "llama")
    file_type = gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32
    write_llama_metadata(
        writer, config, name=name, file_type=file_type, pieces=VOCAB, scores=[0.0] * N_VOCAB,
        token_types=token_types(),
    )

    matrix_type = np.float16 if f16 else np.float32
    for tensor_name in expected:
        array = np.asarray(weights[tensor_name])
        dtype = matrix_type if array.ndim == 2 else np.float32
        writer.add_tensor(tensor_name, np.ascontiguousarray(array, dtype=dtype))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
