"""llama.cpp measured as its own tools measure it: a context of its own on an engine's loaded model, driven through
the C API with no sampling and no Python per token beyond one ``llama_decode`` call.

- ``prompt`` / ``generate`` are ``llama-bench``'s ``test_prompt`` / ``test_gen``: a prompt of random token ids
  (BOS first when the vocabulary adds one) decoded in ``n_batch`` chunks, then ``llama_synchronize``; generation is
  ``n_gen`` single-token decodes of random ids, synchronised after each. The cache is cleared before each run,
  outside the timed region; ``generate(n_gen, n_depth)`` first fills the cache with ``n_depth`` prompt tokens,
  outside the timed region too (llama-bench's ``-d``).
- ``batched`` is ``llama-batched-bench``'s loop for one (pp, tg, pl): ``pl`` sequences of ``pp`` prompt tokens
  (token id 0, one seq id each) in one batch decoded in ``n_batch`` chunks, then ``tg`` steps of one token per
  sequence; the cache is cleared inside the prompt's timed region, as llama-batched-bench does.

The context copies the engine's threads, batch sizes, KV types and flash attention; ``n_ctx`` and ``n_seq_max``
are the measurement's. llama.cpp's log line for the KV buffer it allocated is kept (``kv_report``).
"""

from __future__ import annotations

import ctypes
import random
import time
from typing import Any

from pytest_llmperf.core.kv_cache import LlamaKvReport, parse_llama_kv_log
from pytest_llmperf.errors import EngineError


def _offset(pointer: Any, items: int) -> Any:
    """``pointer + items`` (C pointer arithmetic on a ctypes pointer)."""
    address = ctypes.addressof(pointer.contents) + items * ctypes.sizeof(pointer._type_)
    return ctypes.cast(address, type(pointer))


class BenchContext:
    """A llama.cpp context of ``n_ctx`` cells over ``n_seq_max`` sequences on ``llm``'s model (a
    ``llama_cpp.Llama``)."""

    def __init__(self, llm: Any, n_ctx: int, n_seq_max: int = 1, *, n_batch: int | None = None,
                 n_ubatch: int | None = None, seed: int = 0) -> None:
        import llama_cpp

        self._lib = llama_cpp
        params = llama_cpp.llama_context_default_params()
        source = llm.context_params
        for field in ("n_threads", "n_threads_batch", "type_k", "type_v", "flash_attn_type", "offload_kqv",
                      "n_batch", "n_ubatch", "swa_full"):
            setattr(params, field, getattr(source, field))
        params.n_ctx = n_ctx
        params.n_seq_max = n_seq_max
        params.no_perf = True
        if n_batch is not None:
            params.n_batch = n_batch
        if n_ubatch is not None:
            params.n_ubatch = n_ubatch
        self.n_batch = int(params.n_batch)
        self.n_seq_max = n_seq_max
        from pytest_llmperf.engines.llama_cpp_log import captured_llama_log

        with captured_llama_log() as lines:
            self._ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self._ctx:
            raise EngineError(f"llama.cpp could not make a context of n_ctx={n_ctx}, n_seq_max={n_seq_max}: "
                              + "".join(line for line in lines if "error" in line.lower()).strip())
        self.kv_report: LlamaKvReport | None = parse_llama_kv_log("".join(lines))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self._bos = int(llama_cpp.llama_vocab_bos(vocab)) if llama_cpp.llama_vocab_get_add_bos(vocab) else None
        self._random = random.Random(seed)
        self._memory = llama_cpp.llama_get_memory(self._ctx)

    def reseed(self, seed: int) -> None:
        """Draw the same random token ids again from here on (a repetition that repeats its work exactly)."""
        self._random = random.Random(seed)

    def clear(self) -> None:
        self._lib.llama_memory_clear(self._memory, False)

    def _token(self) -> int:
        return self._random.randrange(self._n_vocab)

    def _decode(self, batch: Any) -> None:
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise EngineError(f"llama_decode returned {status} (n_ctx={self.n_ctx}, n_seq_max={self.n_seq_max})")

    def _chunks(self, n_tokens: int, first: bool) -> list[Any]:
        """``n_tokens`` random token ids in chunks of ``n_batch`` (BOS first when ``first`` and the vocabulary
        adds one)."""
        chunks = []
        done = 0
        while done < n_tokens:
            size = min(n_tokens - done, self.n_batch)
            head = self._bos if first and done == 0 and self._bos is not None else self._token()
            chunks.append((ctypes.c_int32 * size)(head, *(self._token() for _ in range(size - 1))))
            done += size
        return chunks

    def prompt(self, n_prompt: int) -> float:
        """Seconds to evaluate a prompt of ``n_prompt`` random tokens in chunks of ``n_batch`` (llama-bench pp)."""
        chunks = self._chunks(n_prompt, first=True)
        self.clear()
        start = time.perf_counter()
        for chunk in chunks:
            self._decode(self._lib.llama_batch_get_one(chunk, len(chunk)))
        self._lib.llama_synchronize(self._ctx)
        return time.perf_counter() - start

    def prefill(self, n_depth: int) -> None:
        """Clear the cache, then fill it with ``n_depth`` random prompt tokens (llama-bench's ``-d``): the context
        a generation test starts from."""
        chunks = self._chunks(n_depth, first=True)
        self.clear()
        for chunk in chunks:
            self._decode(self._lib.llama_batch_get_one(chunk, len(chunk)))
        self._lib.llama_synchronize(self._ctx)

    def generate(self, n_gen: int, n_depth: int = 0) -> float:
        """Seconds for ``n_gen`` single-token decodes of random tokens (llama-bench tg) after a context of
        ``n_depth`` tokens (filled outside the timed region)."""
        self.prefill(n_depth)
        return self.decode_tokens(n_gen, first=n_depth == 0)

    def decode_tokens(self, n_gen: int, first: bool = False) -> float:
        """Seconds for ``n_gen`` single-token decodes of random tokens, continuing the cache as it is (BOS first
        when ``first``)."""
        head = self._bos if first and self._bos is not None else self._token()
        tokens = [head] + [self._token() for _ in range(n_gen - 1)]
        cells = [(ctypes.c_int32 * 1)(token) for token in tokens]
        get_one, decode, synchronize, ctx = (self._lib.llama_batch_get_one, self._decode, self._lib.llama_synchronize,
                                              self._ctx)
        start = time.perf_counter()
        for cell in cells:
            decode(get_one(cell, 1))
            synchronize(ctx)
        return time.perf_counter() - start

    def batched(self, n_prompt: int, n_gen: int, n_parallel: int) -> tuple[float, float]:
        """``(prompt seconds, generation seconds)`` for ``n_parallel`` sequences of ``n_prompt`` + ``n_gen``
        tokens decoded together (llama-batched-bench's loop, token id 0 throughout as it uses)."""
        if n_parallel > self.n_seq_max:
            raise EngineError(f"{n_parallel} parallel sequences need n_seq_max >= {n_parallel} (have {self.n_seq_max})")
        lib = self._lib
        size = max(n_prompt * n_parallel, n_parallel)
        batch = lib.llama_batch_init(size, 0, n_parallel)
        try:
            self._fill(batch, [(position, sequence) for position in range(n_prompt) for sequence in range(n_parallel)])
            batch.logits[batch.n_tokens - 1] = True
            start = time.perf_counter()
            self.clear()  # inside the prompt's time, as llama-batched-bench times it
            self._decode_chunked(batch)
            lib.llama_synchronize(self._ctx)
            prompt_seconds = time.perf_counter() - start
            start = time.perf_counter()
            for step in range(n_gen):
                self._fill(batch, [(n_prompt + step, sequence) for sequence in range(n_parallel)], logits=True)
                self._decode_chunked(batch)
                lib.llama_synchronize(self._ctx)
            return prompt_seconds, time.perf_counter() - start
        finally:
            lib.llama_batch_free(batch)

    @staticmethod
    def _fill(batch: Any, cells: list[tuple[int, int]], logits: bool = False) -> None:
        for index, (position, sequence) in enumerate(cells):
            batch.token[index] = 0
            batch.pos[index] = position
            batch.n_seq_id[index] = 1
            batch.seq_id[index][0] = sequence
            batch.logits[index] = logits
        batch.n_tokens = len(cells)

    def _decode_chunked(self, batch: Any) -> None:
        """``decode_helper`` of llama-batched-bench: views of at most ``n_batch`` tokens."""
        lib = self._lib
        for offset in range(0, batch.n_tokens, self.n_batch):
            n = min(self.n_batch, batch.n_tokens - offset)
            view = lib.llama_batch()
            view.n_tokens = n
            view.token = _offset(batch.token, offset)
            view.embd = None
            view.pos = _offset(batch.pos, offset)
            view.n_seq_id = _offset(batch.n_seq_id, offset)
            view.seq_id = _offset(batch.seq_id, offset)
            view.logits = _offset(batch.logits, offset)
            self._decode(view)

    def close(self) -> None:
        if self._ctx:
            self._lib.llama_free(self._ctx)
            self._ctx = None

    def __enter__(self) -> BenchContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
