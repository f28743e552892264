"""A stand-in for ``vllm`` 0.33.0 (CUDA-only, cannot run here), shaped like its real API at the boundary used.

Same names as the real package: ``vllm.LLM(model, **kwargs)`` whose kwargs must be ``EngineArgs`` fields,
``LLM.get_tokenizer()``, ``LLM.generate(prompts, sampling_params, use_tqdm=...)`` returning ``RequestOutput``
objects (``request_id``, ``prompt_token_ids``, ``outputs[0].token_ids``, ``metrics``: a ``RequestStateStats``
with ``first_token_latency``, ``first_token_ts``, ``last_token_ts``, filled only when
``disable_log_stats=False``), ``LLM.llm_engine.engine_core.shutdown()``, ``vllm.SamplingParams`` (a msgspec
Struct: ``__struct_fields__``), ``vllm.engine.arg_utils.EngineArgs`` (a dataclass) and
``vllm.distributed.cleanup_dist_env_and_memory``. Timings are scripted: prefill and per-token seconds.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from typing import Any, ClassVar


@dataclasses.dataclass
class EngineArgs:
    model: str = ""
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float = 0.92
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    disable_log_stats: bool = False
    quantization: str | None = None
    enforce_eager: bool = False
    enable_chunked_prefill: bool | None = None


class SamplingParams:
    __struct_fields__ = (
        "n",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "ignore_eos",
        "max_tokens",
        "min_tokens",
        "detokenize",
    )

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self.__struct_fields__)
        if unknown:
            raise TypeError(f"unexpected keyword arguments {unknown}")
        self.n, self.temperature, self.seed, self.ignore_eos, self.min_tokens = 1, 1.0, None, False, 0
        self.max_tokens: int | None = 16
        for key, value in kwargs.items():
            setattr(self, key, value)


class Tokenizer:
    vocab_size = 1000
    bos_token_id = 1
    eos_token_id = 2
    all_special_ids: ClassVar[list[int]] = [0, 1, 2]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1] + [3 + (ord(ch) % 900) for ch in text]


class EngineCore:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def shutdown(self, timeout: float | None = None) -> None:
        self.state["shutdown"] = True


class LLM:
    instances: ClassVar[list[LLM]] = []
    prefill_s = 0.010
    per_token_s = 0.002

    def __init__(self, model: str, **kwargs: Any) -> None:
        fields = {field.name for field in dataclasses.fields(EngineArgs)}
        unknown = set(kwargs) - fields
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        self.model, self.kwargs = model, kwargs
        self.log_stats = not kwargs.get("disable_log_stats", True)  # LLM() disables stats unless told
        self.state: dict[str, Any] = {"shutdown": False, "calls": []}
        self.llm_engine = types.SimpleNamespace(engine_core=EngineCore(self.state))
        LLM.instances.append(self)

    def get_tokenizer(self) -> Tokenizer:
        return Tokenizer()

    def generate(self, prompts: Any, sampling_params: Any = None, *, use_tqdm: bool = True) -> list[Any]:
        self.state["calls"].append((prompts, sampling_params))
        outputs = []
        for index, (prompt, params) in enumerate(zip(prompts, sampling_params, strict=True)):
            tokens = params.max_tokens if params.ignore_eos else min(params.max_tokens, 3)
            metrics = None
            if self.log_stats:
                ttft = self.prefill_s * (index + 1)  # a batch's prefills take turns
                metrics = types.SimpleNamespace(
                    arrival_time=1.7e9,
                    first_token_latency=ttft,
                    first_token_ts=100.0 + ttft,
                    last_token_ts=100.0 + ttft + self.per_token_s * (tokens - 1),
                    num_generation_tokens=tokens,
                )
            outputs.append(
                types.SimpleNamespace(
                    request_id=str(index),
                    prompt_token_ids=prompt["prompt_token_ids"],
                    outputs=[types.SimpleNamespace(token_ids=list(range(tokens)), text="x" * tokens)],
                    metrics=metrics,
                )
            )
        return outputs


def install(monkeypatch: Any) -> types.ModuleType:
    """Put the fake ``vllm`` (and the submodules the engine imports) into ``sys.modules``."""
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams  # type: ignore[attr-defined]
    arg_utils = types.ModuleType("vllm.engine.arg_utils")
    arg_utils.EngineArgs = EngineArgs  # type: ignore[attr-defined]
    distributed = types.ModuleType("vllm.distributed")
    distributed.cleaned = 0  # type: ignore[attr-defined]

    def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
        distributed.cleaned += 1  # type: ignore[attr-defined]

    distributed.cleanup_dist_env_and_memory = cleanup_dist_env_and_memory  # type: ignore[attr-defined]
    engine = types.ModuleType("vllm.engine")
    for name, module in {
        "vllm": vllm,
        "vllm.engine": engine,
        "vllm.engine.arg_utils": arg_utils,
        "vllm.distributed": distributed,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    LLM.instances.clear()
    return vllm
