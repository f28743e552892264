"""The ``llama_cpp`` backend: llama.cpp in-process through llama-cpp-python.

Config keys are validated against the real API: constructor knobs are ``llama_cpp.Llama.__init__``'s
parameters (n_ctx, n_threads, n_batch, n_ubatch, flash_attn, type_k, ...), sampling knobs are
``Llama.create_completion``'s (temperature, top_k, top_p, repeat_penalty, ...). ``model`` is a GGUF path or the
name of an embedded variant (``f16``, ``q8_0``, ``q4_k_m``); None means the embedded F16 model.

Requests run one at a time (llama-cpp-python serves one sequence per ``Llama``). Before each request the
KV cache is reset so no prefix is reused, EOS is suppressed by a logits processor that sets its score to
-1e9 (llama-cpp-python has no ``ignore_eos``), and each streamed chunk is timestamped. The output token
count is read from the engine, not from the chunks: after a completion stopped by ``max_tokens`` llama.cpp
has evaluated the prompt and every sampled token but the last, so ``n_tokens - prompt_tokens + 1`` tokens
were generated.
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.assets.model import VARIANTS, default_model_path, is_trained_model_name, trained_model_path
from pytest_llmperf.core.engine_memory import engine_memory_metrics, parse_llama_buffers
from pytest_llmperf.core.workload import Request, RequestRecord
from pytest_llmperf.engines.llama_cpp_log import captured_llama_log
from pytest_llmperf.errors import EngineError
from pytest_llmperf.quiet import native_output_silenced

# Defaults that make measurements repeatable; every one can be overridden in the config.
_ENGINE_DEFAULTS: dict[str, Any] = {"n_ctx": 2048, "seed": 0, "verbose": False}
_SAMPLING_DEFAULTS: dict[str, Any] = {"temperature": 0.0}
# Parameters of create_completion that the runner owns.
_RUNNER_OWNED = {"self", "prompt", "max_tokens", "stream", "logit_bias", "suffix", "echo", "model", "stop"}
_EOS_BIAS = -1e9


def _parameters(function: Any) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
    }


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """A model path from a config value: None (embedded F16), an embedded variant name, a trained model name
    (``addition-full-q4_0``), or a GGUF path."""
    if model is None:
        return default_model_path("f16")
    if isinstance(model, str) and model in VARIANTS:
        return default_model_path(model)
    if isinstance(model, str) and is_trained_model_name(model):
        return trained_model_path(model)
    path = Path(model).expanduser()
    if not path.is_file():
        raise EngineError(
            f"model file not found: {path} (config key 'model'; give a GGUF path, one of the embedded "
            f"variants {', '.join(VARIANTS)}, or a trained model addition-<full|partial>-<variant>)"
        )
    return path


def default_threads() -> int:
    """Half the cores (at least one): llama.cpp's worker threads spin at their barriers, so a thread that loses
    its core to a neighbour stalls the others. Measured here (2 cores, docs/noise.md): 1 thread decoded as fast
    as 2 on a quiet machine with a third of the spread, and 2.5x faster than 2 beside one busy process."""
    return max(1, (os.cpu_count() or 2) // 2)


def _thread_defaults(config: dict[str, Any]) -> list[str]:
    """Fill in ``n_threads`` (``default_threads``) and ``n_threads_batch`` (= ``n_threads``; llama-cpp-python
    would take every core for prompt processing); a warning when the threads exceed the cores free now."""
    from pytest_llmperf.core.hardware import free_cores

    if config.get("n_threads") is None:
        config["n_threads"] = default_threads()
    if config.get("n_threads_batch") is None:
        config["n_threads_batch"] = config["n_threads"]
    threads = max(int(config["n_threads"]), int(config["n_threads_batch"]))
    free = free_cores()
    if free is not None and threads > free + 0.5:
        return [threads_warning(threads, free, os.cpu_count() or 1)]
    return []


def threads_warning(threads: int, free: float, cores: int) -> str:
    """What was measured (the cores other processes kept busy), what it does to the numbers, and what to do."""
    fewer = max(1, int(free + 0.5))
    harm = ("its thread has to share a core" if threads == 1 else
            "its threads wait for each other at every step, so one thread without a core of its own stalls them all")
    advice = f"pass n_threads={fewer} to the engine, or " if fewer < threads else ""
    return (f"llama.cpp runs {threads} thread{'' if threads == 1 else 's'}, but other processes kept "
            f"{cores - free:.1f} of this machine's {cores} cores busy when the run started (measured over half a "
            f"second), leaving {free:.1f} idle: "
            f"{harm}, and the numbers come out slow and noisy; {advice}run where nothing else keeps the cores busy")


_warmed_up = False


def warm_up() -> None:
    """Load and run a tiny model once, so llama.cpp's one-time costs (code pages, backend init) are paid
    before the first measured engine; otherwise the first engine of a session shows ~30 MB more host
    memory than the same engine built later."""
    global _warmed_up
    if _warmed_up:
        return
    import llama_cpp

    path = default_model_path("q4_k_m")  # (outside the silenced block: building the model silences the quantiser)
    with native_output_silenced():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        llm.eval([llm.token_bos(), 300, 301, 302])
    finally:
        llm.close()
    _warmed_up = True


def _fingerprint_value(value: Any) -> Any:
    """A JSON-safe, run-independent stand-in for a knob value: objects (logits processors, grammars) by type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_fingerprint_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _fingerprint_value(item) for key, item in value.items()}
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


#: KV-cache types llama.cpp takes for ``type_k`` / ``type_v`` (by name; a quantised V cache needs flash_attn).
CACHE_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


def _cache_types(llama_cpp: Any, config: dict[str, Any]) -> dict[str, int]:
    """``type_k="q8_0"`` as the ggml type number ``llama_cpp.Llama`` takes (the config keeps the name, so the
    fingerprint and a study's axis read ``q8_0``, not ``8``)."""
    numbers = {}
    for knob in ("type_k", "type_v"):
        name = config.get(knob)
        if isinstance(name, str):
            number = getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None)
            if name.lower() not in CACHE_TYPES or number is None:
                raise EngineError(f"llama_cpp engine knob {knob}={name!r}: not a KV-cache type; use one of "
                                  f"{', '.join(CACHE_TYPES)} (or a ggml type number)")
            numbers[knob] = int(number)
    return numbers


#: The ctypes types of llama.cpp's parameter structs that ``native_params`` copies (numbers and flags).
_SCALAR_CTYPES = frozenset({"c_int", "c_uint", "c_int32", "c_uint32", "c_long", "c_ulong", "c_float", "c_bool"})


class LlamaCppEngine:
    """A ``llama_cpp.Llama`` measured in-process."""

    backend = "llama_cpp"

    def __init__(self, model: str | os.PathLike[str] | None = None, **knobs: Any) -> None:
        import llama_cpp

        engine_knobs = _parameters(llama_cpp.Llama.__init__) - {"self", "model_path"}
        sampling_knobs = _parameters(llama_cpp.Llama.create_completion) - _RUNNER_OWNED
        unknown = sorted(set(knobs) - engine_knobs - sampling_knobs)
        if unknown:
            hints = [
                f"{name!r} (did you mean {', '.join(repr(m) for m in close)}?)"
                if (close := difflib.get_close_matches(name, engine_knobs | sampling_knobs, n=2))
                else repr(name)
                for name in unknown
            ]
            raise EngineError(
                f"unknown llama_cpp engine knob {', '.join(hints)}; knobs are llama_cpp.Llama() parameters "
                f"({', '.join(sorted(engine_knobs))}) or create_completion() sampling parameters "
                f"({', '.join(sorted(sampling_knobs))})"
            )
        self.model_path = resolve_model(model)
        self.engine_config = {**_ENGINE_DEFAULTS, **{k: v for k, v in knobs.items() if k in engine_knobs}}
        self.warnings = _thread_defaults(self.engine_config)
        self.sampling = {**_SAMPLING_DEFAULTS, **{k: v for k, v in knobs.items() if k in sampling_knobs}}
        quiet = native_output_silenced() if not self.engine_config.get("verbose") else contextlib.nullcontext()
        arguments = {**self.engine_config, **_cache_types(llama_cpp, self.engine_config)}
        try:
            # llama.cpp warns past verbose=False (n_ctx_seq > n_ctx_train); verbose=True shows all. Its log names
            # every buffer it allocates: the engine's own memory (``core/engine_memory.py``).
            with quiet, captured_llama_log() as log:
                self._llm = llama_cpp.Llama(model_path=str(self.model_path), **arguments)
        except (ValueError, RuntimeError, TypeError) as error:
            raise EngineError(
                f"llama.cpp could not load {self.model_path} with {self.engine_config}: {error}"
            ) from None
        finally:
            if self.engine_config.get("verbose"):
                print("".join(log), end="", file=sys.stderr)
        self.buffers = parse_llama_buffers("".join(log))
        self._eos = self._llm.token_eos()
        self._bos = self._llm.token_bos()
        # EOS is suppressed by a logits processor of our own, not ``logit_bias``: llama-cpp-python 0.3.36 drops
        # both its logit_bias and a user's ``logits_processor`` when given the two (``list.extend`` returns None).
        user_processors = list(self.sampling.get("logits_processor") or [])
        self._sampling_with_eos = {
            **self.sampling,
            "logits_processor": llama_cpp.LogitsProcessorList([*user_processors, self._suppress_eos]),
        }
        self._prompt_tokens = self._word_tokens(llama_cpp)

    def _word_tokens(self, llama_cpp: Any) -> list[int]:
        """Ids of NORMAL tokens: random prompts drawn from them are valid text for any vocabulary."""
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        normal = llama_cpp.LLAMA_TOKEN_ATTR_NORMAL
        tokens = [
            token
            for token in range(self._llm.n_vocab())
            if llama_cpp.llama_vocab_get_attr(vocab, token) & normal and token not in (self._eos, self._bos)
        ]
        if not tokens:
            raise EngineError(f"{self.model_path} has no NORMAL tokens to build prompts from")
        return tokens

    def _suppress_eos(self, input_ids: Any, scores: Any) -> Any:
        scores[self._eos] = _EOS_BIAS
        return scores

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model_path": str(self.model_path),
            "engine_config": {
                key: _fingerprint_value(value) for key, value in self.engine_config.items() if key != "verbose"
            },
            "sampling": {key: _fingerprint_value(value) for key, value in self.sampling.items()},
        }

    def make_prompt(self, seed: int, n_tokens: int) -> list[int]:
        import numpy as np

        rng = np.random.default_rng(seed)
        body = rng.choice(self._prompt_tokens, size=n_tokens - 1 if self._bos >= 0 else n_tokens)
        prefix = [self._bos] if self._bos >= 0 else []
        return prefix + [int(token) for token in body]

    def tag_prompt(self, text: str, seed: int) -> list[int]:
        tokens = self._llm.tokenize(f"[request {seed}] {text}".encode(), add_bos=True)
        return list(tokens)

    def run(
        self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None, seed: int = 0
    ) -> list[RequestRecord]:
        if concurrency != 1 or request_rate is not None:
            raise EngineError(
                "the llama_cpp backend runs one request at a time; concurrency and request_rate need a server engine"
            )
        return [self._run_one(request, seed + index) for index, request in enumerate(requests)]

    def _run_one(self, request: Request, seed: int) -> RequestRecord:
        prompt = request.prompt if isinstance(request.prompt, list) else self.tag_prompt(request.prompt, seed)
        n_ctx = self._llm.n_ctx()
        if len(prompt) + request.max_tokens > n_ctx:
            raise EngineError(
                f"{len(prompt)} prompt + {request.max_tokens} generated tokens do not fit n_ctx={n_ctx}; "
                "raise the engine's n_ctx or shorten the workload"
            )
        self._llm.reset()  # type: ignore[no-untyped-call]
        chunk_times: list[float] = []
        t_send = time.perf_counter()
        stream = self._llm.create_completion(
            prompt=prompt, max_tokens=request.max_tokens, stream=True, seed=seed, **self._sampling_with_eos
        )
        try:
            for chunk in stream:
                if chunk["choices"][0]["text"]:  # type: ignore[index]
                    chunk_times.append(time.perf_counter())
        except (RuntimeError, ValueError) as error:
            raise EngineError(f"llama.cpp failed while generating from {self.model_path.name}: {error}") from None
        t_done = time.perf_counter()
        output_tokens = self._llm.n_tokens - len(prompt) + 1
        return RequestRecord(t_send, t_done, len(prompt), output_tokens, chunk_times)

    def fidelity_logprobs(self, prompt: str, top_k: int, context: str = "") -> tuple[list[Any], str]:
        """Next-token distributions (full, keyed by token id) after every token of ``prompt`` (BOS first), from
        the last token of ``context`` (a prefix of ``prompt``) on.

        Tokens are evaluated one at a time, so no ``logits_all`` is needed: after each, llama.cpp's logits
        (``llama_get_logits_ith(ctx, -1)``) are those of the last token.
        """
        import llama_cpp
        import numpy as np

        from pytest_llmperf.core.distributions import FullDistribution

        tokens = self._llm.tokenize(prompt.encode(), add_bos=True)
        if len(tokens) > self._llm.n_ctx():
            raise EngineError(f"fidelity prompt of {len(tokens)} tokens does not fit n_ctx={self._llm.n_ctx()}")
        self._llm.reset()  # type: ignore[no-untyped-call]
        rows = []
        for token in tokens:
            self._llm.eval([token])
            pointer = llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
            logits = np.ctypeslib.as_array(pointer, shape=(self._llm.n_vocab(),)).astype(np.float64)
            shifted = logits - logits.max()
            rows.append(FullDistribution(shifted - np.log(np.exp(shifted).sum())))
        self._llm.reset()  # type: ignore[no-untyped-call]
        if context:
            skipped = len(self._llm.tokenize(context.encode(), add_bos=True)) - 1
            return rows[max(skipped, 0) :], "id"
        return rows, "id"

    def bench_context(self, n_ctx: int, n_seq_max: int = 1, **options: Any) -> Any:
        """A llama.cpp context of its own on this engine's model, for llama-bench-style measurements
        (``engines/llama_cpp_bench.BenchContext``)."""
        from pytest_llmperf.engines.llama_cpp_bench import BenchContext

        return BenchContext(self._llm, n_ctx, n_seq_max, **options)

    def native_params(self) -> dict[str, Any]:
        """The model file and the scalar fields of the ``llama_model_params`` and ``llama_context_params`` this
        engine's model and context were made with: another process makes the same ones from them
        (``measure/instructions.py`` counts instructions in a child under valgrind). Pointer fields (devices,
        tensor splits, KV overrides, callbacks) are left at llama.cpp's defaults."""
        def scalars(params: Any) -> dict[str, int | float | bool]:
            return {name: getattr(params, name) for name, kind in params._fields_
                    if kind.__name__ in _SCALAR_CTYPES}

        return {"model": str(self.model_path), "model_params": scalars(self._llm.model_params),
                "context_params": scalars(self._llm.context_params)}

    def engine_memory(self) -> dict[str, float | None]:
        """The engine's own allocations as llama.cpp logged them when the model loaded and the context was made
        (``engine_mem_gib`` and its parts; ``core/engine_memory.py``)."""
        return engine_memory_metrics(self.buffers)

    def lm_eval_model(self, **model_args: Any) -> Any:
        """An lm-eval ``LM`` scoring with this engine's model (imports lm-eval)."""
        from pytest_llmperf.engines.llama_cpp_lm import LlamaCppLM

        if model_args:
            raise EngineError(f"the llama_cpp engine's lm-eval model takes no model_args, got {sorted(model_args)}")

        return LlamaCppLM(self._llm)

    def close(self) -> None:
        self._llm.close()
