"""In-process ``vllm.LLM`` (written against vLLM 0.33.0's source; vLLM is CUDA-only and cannot run here).

- Knobs: every field of ``vllm.engine.arg_utils.EngineArgs`` (the dataclass ``LLM(**kwargs)`` feeds), e.g.
  ``max_num_seqs``, ``max_num_batched_tokens``, ``enable_chunked_prefill``, ``gpu_memory_utilization``,
  ``tensor_parallel_size``, ``quantization``, ``kv_cache_dtype``, ``enable_prefix_caching``; and sampling fields of
  ``vllm.SamplingParams`` (``temperature``, ``top_p``, ``seed``, ...). Anything else is rejected by name.
- Requests: token-id prompts (``{"prompt_token_ids": [...]}``), ``SamplingParams(max_tokens=n, min_tokens=n,
  ignore_eos=True)``; ``concurrency`` requests go to one ``LLM.generate`` call at a time (vLLM batches them).
- Timings: ``LLM.generate`` does not stream, so per-request times come from vLLM's ``RequestOutput.metrics``
  (``RequestStateStats``, filled because the engine is built with ``disable_log_stats=False``): TTFT is
  ``first_token_latency``; end-to-end is TTFT + ``last_token_ts - first_token_ts``. There are no inter-token
  gaps, so ``itl_*`` are unavailable (None). Without stats, TTFT, TPOT and end-to-end latency are unavailable
  (None); throughput still counts the ``generate`` call's wall time.
- Accuracy: ``lm_eval_model()`` is an lm-eval ``LM`` over this engine's ``LLM`` (``vllm_lm.py``), so scoring
  loads no second copy of the model.
- Teardown frees the GPU: the engine core is shut down, then vLLM's own ``cleanup_dist_env_and_memory()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import gc
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.core.workload import Request, RequestRecord
from pytest_llmperf.errors import EngineError, EngineUnavailable

#: Sampling fields the runner owns: every request generates exactly n_predict tokens.
_RUNNER_OWNED = {"max_tokens", "min_tokens", "ignore_eos", "n", "detokenize"}
#: lm-eval model_args that ``lm_eval_model`` takes (the rest of lm-eval's ``vllm`` ones build a model).
_LM_EVAL_MODEL_ARGS = {"batch_size", "max_gen_toks"}


def _suggest(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, known, n=2)
    return f"{name!r} (did you mean {', '.join(repr(m) for m in close)}?)" if close else repr(name)


class VllmEngine:
    """A ``vllm.LLM`` measured in-process."""

    backend = "vllm"

    def __init__(self, model: str | None = None, **knobs: Any) -> None:
        try:
            import vllm
            from vllm.engine.arg_utils import EngineArgs
        except ImportError as error:
            raise EngineUnavailable(
                f"backend 'vllm' needs vLLM ({error}): `pip install 'pytest-llmperf[vllm]'` on a CUDA machine "
                "(docs/engines.md)"
            ) from None
        if model is None:
            raise EngineUnavailable(
                "backend 'vllm' needs a model (a local Hugging Face model directory; nothing is downloaded): "
                "give it with `--llmperf-model vllm=DIR` or the ini key llmperf_model (a line `vllm = DIR`)"
            )
        if model in ("f16", "q8_0", "q4_k_m"):
            raise EngineError(
                "backend 'vllm' needs model=<Hugging Face model directory or name>; the embedded tiny GGUF model "
                "is for llama_cpp"
            )
        engine_knobs = {field.name for field in dataclasses.fields(EngineArgs)} - {"model"}
        sampling_knobs = set(vllm.SamplingParams.__struct_fields__) - _RUNNER_OWNED
        unknown = sorted(set(knobs) - engine_knobs - sampling_knobs)
        if unknown:
            raise EngineError(
                f"unknown vllm engine knob {', '.join(_suggest(n, engine_knobs | sampling_knobs) for n in unknown)}; "
                "knobs are vllm EngineArgs fields or SamplingParams fields"
            )
        self.model = model
        # Per-request timings need vLLM's request stats, which LLM() turns off unless told otherwise.
        self.engine_config = {"disable_log_stats": False, **{k: v for k, v in knobs.items() if k in engine_knobs}}
        self.sampling = {"temperature": 0.0, **{k: v for k, v in knobs.items() if k in sampling_knobs}}
        self._vllm = vllm
        try:
            self._llm = vllm.LLM(model=model, **self.engine_config)
        except (ValueError, RuntimeError, TypeError) as error:
            raise EngineError(f"vLLM could not load {model!r} with {self.engine_config}: {error}") from None
        tokenizer = self._llm.get_tokenizer()
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._bos = getattr(tokenizer, "bos_token_id", None)
        self._tokenizer = tokenizer
        self._prompt_tokens = [token for token in range(int(tokenizer.vocab_size)) if token not in special]

    def describe(self) -> dict[str, Any]:
        # A local model directory is named by its last part: no absolute home paths in baselines.
        name = Path(self.model).name if Path(self.model).exists() else self.model
        return {
            "backend": self.backend,
            "model": {"name": name},
            "engine_config": dict(self.engine_config),
            "sampling": dict(self.sampling),
        }

    def make_prompt(self, seed: int, n_tokens: int) -> list[int]:
        rng = random.Random(seed)
        body = [rng.choice(self._prompt_tokens) for _ in range(n_tokens - (self._bos is not None))]
        return ([self._bos] if self._bos is not None else []) + body

    def tag_prompt(self, text: str, seed: int) -> list[int]:
        tokens: list[int] = self._tokenizer.encode(f"[request {seed}] {text}")
        return tokens

    def run(
        self, requests: Sequence[Request], concurrency: int = 1, request_rate: float | None = None, seed: int = 0
    ) -> list[RequestRecord]:
        if request_rate is not None:
            raise EngineError("the vllm backend runs requests in batches of `concurrency`; request_rate needs a server")
        records: list[RequestRecord] = []
        for start in range(0, len(requests), max(concurrency, 1)):
            records += self._run_batch(requests[start : start + max(concurrency, 1)])
        return records

    def _run_batch(self, batch: Sequence[Request]) -> list[RequestRecord]:
        prompts = [
            {"prompt_token_ids": list(r.prompt) if not isinstance(r.prompt, str) else self.tag_prompt(r.prompt, 0)}
            for r in batch
        ]
        params = [
            self._vllm.SamplingParams(
                max_tokens=r.max_tokens, min_tokens=r.max_tokens, ignore_eos=True, **self.sampling
            )
            for r in batch
        ]
        t_send = time.perf_counter()
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        t_batch_done = time.perf_counter()
        records = []
        for output in outputs:
            stats = output.metrics
            generated = len(output.outputs[0].token_ids)
            prompt_tokens = len(output.prompt_token_ids or [])
            if stats is not None and stats.first_token_latency and stats.first_token_ts and stats.last_token_ts:
                ttft = float(stats.first_token_latency)
                e2e = ttft + float(stats.last_token_ts - stats.first_token_ts)
                records.append(RequestRecord(t_send, t_send + e2e, prompt_tokens, generated, [t_send + ttft]))
            else:
                # No stats: the batch's end bounds the throughput, but this request's own latency is unknown.
                records.append(RequestRecord(t_send, t_batch_done, prompt_tokens, generated, [], e2e_known=False))
        return records

    def lm_eval_model(self, **model_args: Any) -> Any:
        """An lm-eval ``LM`` scoring with this engine's own ``vllm.LLM`` (imports lm-eval; loads nothing new).

        ``model_args``: lm-eval's ``vllm`` model arguments that apply to a model already loaded, ``batch_size``
        (requests per ``generate`` call, or ``"auto"``) and ``max_gen_toks``.
        """
        if self._llm is None:
            raise EngineError("the vllm engine is closed: build a new one to score accuracy")
        unknown = sorted(set(model_args) - _LM_EVAL_MODEL_ARGS)
        if unknown:
            raise EngineError(
                f"the vllm engine's lm-eval model takes model_args {sorted(_LM_EVAL_MODEL_ARGS)}, got {unknown}; "
                "the model itself is the engine's (set its knobs in engine_factory)"
            )
        from pytest_llmperf.engines.vllm_lm import VllmLM

        lm = VllmLM(self._llm, **model_args)
        # What changes the scores goes into the fingerprint; batch_size only splits the generate calls.
        lm.llmperf_describe = {"model_type": "vllm_lm", **{k: v for k, v in model_args.items() if k != "batch_size"}}
        return lm

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        del llm
        gc.collect()
        from vllm.distributed import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
