"""The embedded default model: a deterministic tiny Llama GGUF the project builds itself.

No model hub is reachable from the machines this plugin must run on, so the default model is written from
seeded random weights with the ``gguf`` package and quantised with llama.cpp's own quantiser. The file is
built once per machine into a cache directory and reused; concurrent builders (pytest-xdist workers) are
serialised with a file lock and every file appears atomically.

The weights are random, so the model's text is gibberish, but its shape is a real Llama and decoding is
dominated by real matrix work. Output rows of every non-NORMAL token are zeroed so greedy decoding emits
whole-word tokens (a random head otherwise picks byte tokens, whose chunks never form UTF-8 and stall
streaming) — see ``NOTES.md``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf.assets.shape import LlamaShape
from pytest_llmperf.core.fingerprint import file_sha256
from pytest_llmperf.errors import LlmperfError

if TYPE_CHECKING:
    import numpy as np

#: Bump when the builder's output changes, so caches built by an older version are not reused.
BUILDER_VERSION = 1

#: Quantised variants of the embedded model, by the name used in configs and test ids.
VARIANTS: dict[str, str] = {
    "f16": "MOSTLY_F16",
    "q8_0": "MOSTLY_Q8_0",
    "q4_k_m": "MOSTLY_Q4_K_M",
    "q4_0": "MOSTLY_Q4_0",
}

#: The shipped trained models (``tools/train_addition_model.py``): F16 GGUFs in the package, quantised on use.
TRAINED_DIR = Path(__file__).parent / "models"
TRAINED_CHECKPOINTS = ("full", "partial")
_TRAINED_NAME = re.compile(r"^addition-(?P<checkpoint>full|partial)-(?P<variant>[a-z0-9_]+)$")

_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class TinyLlamaSpec(LlamaShape):
    """Shape of the embedded model, and the seed of its random weights."""

    seed: int = 1234

    def cache_key(self) -> str:
        text = repr((BUILDER_VERSION, sorted(asdict(self).items())))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


DEFAULT_SPEC = TinyLlamaSpec(n_vocab=4096, n_embd=512, n_layer=8, n_head=8, n_head_kv=8, n_ff=1536, context_length=4096)


def cache_dir() -> Path:
    """Where built models live: ``$LLMPERF_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-llmperf``."""
    configured = os.environ.get("LLMPERF_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pytest-llmperf"


def vocabulary(n_vocab: int) -> list[str]:
    """SPM pieces: specials, the 256 byte tokens llama.cpp requires, then ASCII word pieces."""
    pieces = list(_SPECIAL_TOKENS) + [f"<0x{byte:02X}>" for byte in range(256)]
    seen = set(pieces)

    def add(piece: str) -> None:
        if piece not in seen and len(pieces) < n_vocab:
            seen.add(piece)
            pieces.append(piece)

    add("\u2581")
    for char in "".join(chr(code) for code in range(33, 127)):
        add(char)
    for first in _ALPHABET:
        add("\u2581" + first)
    for first in _ALPHABET:
        for second in _ALPHABET:
            add(first + second)
            add("\u2581" + first + second)
    # Deterministic three-letter pieces fill the rest.
    for first in _ALPHABET:
        for second in _ALPHABET:
            for third in _ALPHABET:
                add("\u2581" + first + second + third)
    if len(pieces) < n_vocab:
        raise LlmperfError(f"n_vocab={n_vocab} is larger than the tiny vocabulary can fill")
    return pieces


def _token_types(pieces: list[str]) -> list[int]:
    import gguf

    types = []
    for index, _piece in enumerate(pieces):
        if index == 0:
            types.append(gguf.TokenType.UNKNOWN)
        elif index < len(_SPECIAL_TOKENS):
            types.append(gguf.TokenType.CONTROL)
        elif index < len(_SPECIAL_TOKENS) + 256:
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return [int(t) for t in types]


def write_llama_metadata(
    writer: Any, shape: LlamaShape, *, name: str, file_type: Any, pieces: Sequence[str], scores: Sequence[float],
    token_types: Sequence[int],
) -> None:
    """The llama-architecture and SPM tokenizer metadata of a GGUF: BOS 1 added, EOS 2, UNK 0, no space prefix
    (so llama.cpp's tokenizer returns exactly the ids the pieces list)."""
    writer.add_name(name)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(pieces))
    writer.add_token_scores(list(scores))
    writer.add_token_types(list(token_types))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)


def write_tiny_llama(path: Path, spec: TinyLlamaSpec = DEFAULT_SPEC) -> None:
    """Write the F16 model described by ``spec`` to ``path`` (not atomic; callers write to a temp path)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(spec.seed)
    head_dim = spec.n_embd // spec.n_head
    kv_dim = head_dim * spec.n_head_kv

    def weight(rows: int, cols: int) -> np.ndarray:
        # numpy shape is the reverse of ggml's: (out_features, in_features).
        scale = 1.0 / np.sqrt(cols)
        values: np.ndarray = (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float16)
        return values

    def norm() -> np.ndarray:
        return np.ones(spec.n_embd, dtype=np.float32)

    pieces = vocabulary(spec.n_vocab)
    token_types = _token_types(pieces)
    writer = gguf.GGUFWriter(str(path), "llama")
    write_llama_metadata(
        writer, spec, name="llmperf-tiny-llama", file_type=gguf.LlamaFileType.MOSTLY_F16, pieces=pieces,
        scores=[float(len(piece)) - index * 1e-6 for index, piece in enumerate(pieces)], token_types=token_types,
    )

    writer.add_tensor("token_embd.weight", weight(spec.n_vocab, spec.n_embd))
    for block in range(spec.n_layer):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", norm())
        writer.add_tensor(f"{prefix}.attn_q.weight", weight(spec.n_embd, spec.n_embd))
        writer.add_tensor(f"{prefix}.attn_k.weight", weight(kv_dim, spec.n_embd))
        writer.add_tensor(f"{prefix}.attn_v.weight", weight(kv_dim, spec.n_embd))
        writer.add_tensor(f"{prefix}.attn_output.weight", weight(spec.n_embd, spec.n_embd))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", norm())
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(spec.n_ff, spec.n_embd))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(spec.n_ff, spec.n_embd))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(spec.n_embd, spec.n_ff))
    writer.add_tensor("output_norm.weight", norm())
    output = weight(spec.n_vocab, spec.n_embd)
    output[np.asarray(token_types) != int(gguf.TokenType.NORMAL)] = 0
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def quantize(source: Path, destination: Path, variant: str) -> None:
    """Quantise ``source`` into ``destination`` with llama.cpp's own quantiser."""
    import ctypes

    import llama_cpp

    from pytest_llmperf.quiet import native_output_silenced

    ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + VARIANTS[variant])
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    with native_output_silenced():  # a line per tensor, every time a fresh cache builds a variant
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), ctypes.byref(params))
    if status != 0:
        raise LlmperfError(f"llama.cpp failed to quantise {source} to {variant} (status {status})")


def _build_atomically(target: Path, build: Callable[[Path], None]) -> None:
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        build(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def default_model_path(variant: str = "f16", spec: TinyLlamaSpec = DEFAULT_SPEC) -> Path:
    """Path of the embedded model in ``variant`` (f16, q8_0, q4_k_m), building it on first use."""
    if variant not in VARIANTS:
        raise LlmperfError(f"unknown embedded model variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    from filelock import FileLock

    directory = cache_dir() / "models"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"llmperf-tiny-llama-{spec.cache_key()}"
    f16_path = directory / f"{stem}-f16.gguf"
    target = directory / f"{stem}-{variant}.gguf"
    if target.exists():
        return target
    with FileLock(str(directory / f"{stem}.lock")):
        if not f16_path.exists():
            _build_atomically(f16_path, lambda tmp: write_tiny_llama(tmp, spec))
        if not target.exists():
            _build_atomically(target, lambda tmp: quantize(f16_path, tmp, variant))
    return target


def trained_model_names() -> list[str]:
    return [f"addition-{checkpoint}-{variant}" for checkpoint in TRAINED_CHECKPOINTS for variant in VARIANTS]


def is_trained_model_name(name: str) -> bool:
    match = _TRAINED_NAME.match(name)
    return match is not None and match["variant"] in VARIANTS


def trained_model_path(name: str) -> Path:
    """Path of the shipped trained model ``addition-<full|partial>-<variant>``; quantised into the cache on
    first use (the F16 file is used where it is shipped)."""
    match = _TRAINED_NAME.match(name)
    if match is None or match["variant"] not in VARIANTS:
        raise LlmperfError(f"unknown trained model {name!r}; choose one of {', '.join(trained_model_names())}")
    shipped = TRAINED_DIR / f"addition-{match['checkpoint']}-f16.gguf"
    if not shipped.is_file():
        raise LlmperfError(
            f"the shipped model file {shipped} is missing (rebuild it: python tools/train_addition_model.py)"
        )
    if match["variant"] == "f16":
        return shipped
    from filelock import FileLock

    directory = cache_dir() / "models"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"addition-{match['checkpoint']}-{file_sha256(shipped)[:12]}"
    target = directory / f"{stem}-{match['variant']}.gguf"
    if target.exists():
        return target
    with FileLock(str(directory / f"{stem}.lock")):
        if not target.exists():
            _build_atomically(target, lambda tmp: quantize(shipped, tmp, match["variant"]))
    return target
