"""A stand-in for ``vllm`` 0.33.0 (CUDA-only, cannot run here), shaped like its real API at the boundary used.

Same names as the real package (read from the 0.33.0 wheel's sources):

- ``vllm.LLM(model, **kwargs)`` whose kwargs must be ``EngineArgs`` fields; ``LLM.get_tokenizer()``;
  ``LLM.llm_engine.model_config`` (``max_model_len``, ``max_logprobs``, ``runner_type``), also ``LLM.model_config``;
  ``LLM.llm_engine.engine_core.shutdown()``;
- ``LLM.generate(prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
  tokenization_kwargs=None, mm_processor_kwargs=None)``: prompts are one or a list of ``str``, ``list[int]``,
  ``TextPrompt`` or ``TokensPrompt`` dicts; one ``SamplingParams`` for all or one per prompt; checked as vLLM
  checks them (empty prompt, prompt of ``max_model_len`` tokens or more, ``prompt_logprobs`` above
  ``max_logprobs``, list lengths) with ``vllm.exceptions.VLLMValidationError``; returns ``RequestOutput``
  objects in input order, ``prompt_logprobs`` a ``list[dict[int, Logprob] | None]`` (or a ``FlatLogprobs`` with
  ``flat_logprobs=True``, whose position 0 reads ``{}``) holding the prompt token and the top-k tokens with
  vLLM's ranks (``(logprobs >= actual).sum()``), ``outputs[0]`` a ``CompletionOutput``;
- ``vllm.SamplingParams`` (a msgspec Struct in vLLM: ``__struct_fields__``, checked when built: ``max_tokens``
  at least 1, ``stop`` needs ``detokenize=True``, ...), ``vllm.TokensPrompt``/``TextPrompt`` (TypedDicts),
  ``vllm.logprobs.Logprob``/``FlatLogprobs``, ``vllm.outputs.RequestOutput``/``CompletionOutput``,
  ``vllm.engine.arg_utils.EngineArgs`` (a dataclass), ``vllm.distributed.cleanup_dist_env_and_memory``.

The numbers come from a real, tiny language model, ``ToyModel``: next-token log-probabilities (a proper
log-softmax, float64) from the two previous tokens, seeded, over ``Tokenizer``'s 106-token vocabulary (a
greedy longest-match character tokenizer with a few word tokens). Tests compute expected log-likelihoods and
greedy text from ``ToyModel`` directly. Timings are scripted: prefill and per-token seconds, reported in
``RequestOutput.metrics`` only when ``disable_log_stats=False``.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import types
from collections.abc import Iterator, MutableSequence, Sequence
from typing import Any, ClassVar, TypedDict

import numpy as np

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover
    from typing_extensions import NotRequired


class VLLMValidationError(Exception):
    """``vllm.exceptions.VLLMValidationError`` (a ``VLLMClientError``, not a ``ValueError``)."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter, self.value = parameter, value


@dataclasses.dataclass
class EngineArgs:
    model: str = ""
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    max_logprobs: int = 20
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float = 0.92
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    disable_log_stats: bool = False
    quantization: str | None = None
    enforce_eager: bool = False
    enable_chunked_prefill: bool | None = None


# -- prompts, sampling parameters, outputs (vllm/inputs/llm.py, sampling_params.py, logprobs.py, outputs.py) ----


class TextPrompt(TypedDict):
    prompt: str


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]


_SAMPLING_DEFAULTS: dict[str, Any] = {
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "seed": None,
    "stop": None,
    "stop_token_ids": None,
    "ignore_eos": False,
    "max_tokens": 16,
    "min_tokens": 0,
    "logprobs": None,
    "prompt_logprobs": None,
    "flat_logprobs": False,
    "detokenize": True,
    "skip_special_tokens": True,
    "spaces_between_special_tokens": True,
    "include_stop_str_in_output": False,
}
_GREEDY_BELOW = 1e-5  # vllm.sampling_params._SAMPLING_EPS


class SamplingParams:
    """``vllm.SamplingParams``: the fields this project touches, with vLLM's defaults and build-time checks."""

    __struct_fields__ = tuple(_SAMPLING_DEFAULTS)

    n: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    stop: list[str]
    stop_token_ids: list[int]
    ignore_eos: bool
    max_tokens: int | None
    min_tokens: int
    logprobs: int | None
    prompt_logprobs: int | None
    flat_logprobs: bool
    detokenize: bool
    skip_special_tokens: bool
    spaces_between_special_tokens: bool
    include_stop_str_in_output: bool

    def __init__(self, **kwargs: Any) -> None:
        for name in kwargs:
            if name not in _SAMPLING_DEFAULTS:
                raise TypeError(f"Unexpected keyword argument {name!r}")  # msgspec's message
        for name, default in _SAMPLING_DEFAULTS.items():
            setattr(self, name, kwargs.get(name, default))
        self.__post_init__()

    def __post_init__(self) -> None:
        if 0 < self.temperature < 1e-2:
            self.temperature = 1e-2
        if self.seed == -1:
            self.seed = None
        self.stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)
        self.stop_token_ids = list(dict.fromkeys(self.stop_token_ids or []))
        if self.logprobs is True:
            self.logprobs = 1
        if self.prompt_logprobs is True:
            self.prompt_logprobs = 1
        self._verify_args()
        if self.temperature < _GREEDY_BELOW:
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")

    def _verify_args(self) -> None:
        if self.n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {self.n}.", parameter="n", value=self.n)
        if not 0.0 <= self.temperature <= 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {self.temperature}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(
                f"max_tokens must be at least 1, got {self.max_tokens}.", parameter="max_tokens", value=self.max_tokens
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise VLLMValidationError(
                f"min_tokens must be less than or equal to max_tokens={self.max_tokens}, got {self.min_tokens}."
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value != -1 and value < 0:
                raise VLLMValidationError(
                    f"{name} must be non-negative or -1, got {value}.", parameter=name, value=value
                )
        if any(not stop for stop in self.stop):
            raise VLLMValidationError("stop cannot contain an empty string.")
        if self.stop and not self.detokenize:
            raise VLLMValidationError(
                "stop strings are only supported when detokenize is True. Set detokenize=True to use stop."
            )

    def __repr__(self) -> str:
        changed = {
            name: getattr(self, name) for name, default in _SAMPLING_DEFAULTS.items() if getattr(self, name) != default
        }
        return f"SamplingParams({', '.join(f'{k}={v!r}' for k, v in changed.items())})"


@dataclasses.dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclasses.dataclass
class FlatLogprobs(MutableSequence[dict[int, Logprob] | None]):
    """``vllm.logprobs.FlatLogprobs``: flat lists, read back one ``dict[int, Logprob]`` per position."""

    start_indices: list[int] = dataclasses.field(default_factory=list)
    end_indices: list[int] = dataclasses.field(default_factory=list)
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    ranks: list[int | None] = dataclasses.field(default_factory=list)
    decoded_tokens: list[str | None] = dataclasses.field(default_factory=list)

    def append(self, logprobs_one_position: dict[int, Logprob] | None) -> None:
        self.start_indices.append(len(self.logprobs))
        for token_id, logprob in (logprobs_one_position or {}).items():
            self.append_one(token_id, logprob.logprob, logprob.rank, logprob.decoded_token)
        self.end_indices.append(len(self.logprobs))

    def append_fast(
        self, token_ids: list[int], logprobs: list[float], ranks: Iterator[int], decoded_tokens: Sequence[str | None]
    ) -> None:
        self.start_indices.append(len(self.logprobs))
        for token_id, logprob, rank, decoded in zip(token_ids, logprobs, ranks, decoded_tokens, strict=False):
            self.append_one(token_id, logprob, rank, decoded)
        self.end_indices.append(len(self.logprobs))

    def append_one(self, token_id: int, logprob: float, rank: int | None, decoded: str | None) -> None:
        self.token_ids.append(token_id)
        self.logprobs.append(logprob)
        self.ranks.append(rank)
        self.decoded_tokens.append(decoded)

    def __len__(self) -> int:
        return len(self.start_indices)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int):
            return {
                self.token_ids[i]: Logprob(self.logprobs[i], self.ranks[i], self.decoded_tokens[i])
                for i in range(self.start_indices[index], self.end_indices[index])
            }
        raise TypeError(f"the fake FlatLogprobs reads int positions, not {type(index).__name__}")

    def __iter__(self) -> Iterator[dict[int, Logprob]]:
        for position in range(len(self)):
            yield self[position]

    def __setitem__(self, index: Any, value: Any) -> None:
        raise TypeError("Cannot set logprobs in FlatLogprobs")

    def __delitem__(self, index: Any) -> None:
        raise TypeError("Cannot delete logprobs from FlatLogprobs")

    def insert(self, index: int, value: Any) -> None:
        raise TypeError("Cannot insert logprobs to FlatLogprobs")


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: Sequence[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | FlatLogprobs | None
    routed_experts: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None


class RequestOutput:
    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int] | None,
        prompt_logprobs: list[dict[int, Logprob] | None] | FlatLogprobs | None,
        outputs: list[CompletionOutput],
        finished: bool,
        metrics: Any = None,
        lora_request: Any = None,
        encoder_prompt: str | None = None,
        encoder_prompt_token_ids: list[int] | None = None,
        num_cached_tokens: int | None = None,
        num_cache_creation_tokens: int | None = None,
        *,
        prompt_token_id_logprobs: Any = None,
        kv_transfer_params: dict[str, Any] | None = None,
        ec_transfer_params: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.prompt_token_id_logprobs = prompt_token_id_logprobs
        self.outputs = outputs
        self.finished = finished
        self.metrics = metrics
        self.lora_request = lora_request
        self.encoder_prompt = encoder_prompt
        self.encoder_prompt_token_ids = encoder_prompt_token_ids
        self.num_cached_tokens = num_cached_tokens
        self.num_cache_creation_tokens = num_cache_creation_tokens
        self.kv_transfer_params = kv_transfer_params
        self.ec_transfer_params = ec_transfer_params


# -- the model: a tokenizer and a tiny seeded language model -----------------------------------------------------

UNK, BOS, EOS = 0, 1, 2
_SPECIAL = ["<unk>", "<s>", "</s>"]
_WORDS = ["Question", "Answer", "What", " is", " plus", " minus", " times"]
VOCAB: list[str] = _SPECIAL + ["\n"] + [chr(code) for code in range(32, 127)] + _WORDS


class Tokenizer:
    """HF-like (``encode``/``decode``/special ids): greedy longest match over ``VOCAB``, BOS added by default."""

    bos_token_id, eos_token_id, pad_token_id, unk_token_id = BOS, EOS, None, UNK
    bos_token, eos_token = "<s>", "</s>"
    all_special_ids: ClassVar[list[int]] = [UNK, BOS, EOS]
    vocab_size = len(VOCAB)
    max_token_id = len(VOCAB) - 1
    _ids: ClassVar[dict[str, int]] = {piece: token for token, piece in enumerate(VOCAB)}
    _longest = max(len(piece) for piece in VOCAB)

    def __len__(self) -> int:
        return self.vocab_size

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def encode(
        self, text: str, truncation: bool | None = None, max_length: int | None = None, add_special_tokens: bool = True
    ) -> list[int]:
        tokens = [BOS] if add_special_tokens else []
        at = 0
        while at < len(text):
            for length in range(min(self._longest, len(text) - at), 0, -1):
                token = self._ids.get(text[at : at + length])
                if token is not None:
                    break
            else:
                token, length = UNK, 1
            tokens.append(token)
            at += length
        return tokens[:max_length] if truncation and max_length is not None else tokens

    def decode(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> str:
        ids = [ids] if isinstance(ids, int) else ids
        return "".join(VOCAB[t] for t in ids if not (skip_special_tokens and t in self.all_special_ids))

    def convert_ids_to_tokens(self, ids: Sequence[int], skip_special_tokens: bool = False) -> list[str]:
        return [VOCAB[t] for t in ids if not (skip_special_tokens and t in self.all_special_ids)]


class ToyModel:
    """Next-token log-probabilities from the two previous tokens: seeded normal logits, log-softmax in float64."""

    def __init__(self, vocab_size: int = len(VOCAB), seed: int = 0, scale: float = 3.0) -> None:
        self.vocab_size, self.seed, self.scale = vocab_size, seed, scale
        self._rows: dict[tuple[int, int], np.ndarray[Any, Any]] = {}

    def next_log_probs(self, previous: Sequence[int]) -> np.ndarray[Any, Any]:
        """log p(next | previous tokens); only the last two count (-1 stands for "no token")."""
        key = (int(previous[-2]) if len(previous) > 1 else -1, int(previous[-1]))
        row = self._rows.get(key)
        if row is None:
            generator = np.random.default_rng([self.seed, key[0] + 1, key[1] + 1])
            logits = generator.standard_normal(self.vocab_size) * self.scale
            shifted = logits - logits.max()
            row = shifted - np.log(np.exp(shifted).sum())
            row.setflags(write=False)
            self._rows[key] = row
        return row

    def greedy(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        """The greedy continuation of ``prompt`` (up to ``max_tokens`` tokens, EOS included when reached)."""
        tokens = list(prompt)
        for _ in range(max_tokens):
            tokens.append(int(np.argmax(self.next_log_probs(tokens))))
            if tokens[-1] == EOS:
                break
        return tokens[len(prompt) :]


# -- the engine ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ModelConfig:
    max_model_len: int
    max_logprobs: int = 20
    runner_type: str = "generate"


class EngineCore:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def shutdown(self, timeout: float | None = None) -> None:
        self.state["shutdown"] = True


class LLMEngine:
    def __init__(self, model_config: ModelConfig, engine_core: EngineCore, tokenizer: Tokenizer) -> None:
        self.model_config, self.engine_core, self._tokenizer = model_config, engine_core, tokenizer

    def get_tokenizer(self) -> Tokenizer:
        return self._tokenizer


def _parse_prompt(prompt: Any, tokenizer: Tokenizer) -> tuple[str | None, list[int]]:
    """vllm/renderers/inputs/preprocess.py ``parse_dec_only_prompt``, then tokenisation of a text prompt."""
    if isinstance(prompt, str):
        return prompt, tokenizer.encode(prompt)
    if isinstance(prompt, list):
        if not all(isinstance(token, int) for token in prompt):
            raise TypeError("Token prompt should be a list of integers")
        return None, list(prompt)
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return prompt.get("prompt"), list(prompt["prompt_token_ids"])
        if "prompt" in prompt:
            return prompt["prompt"], tokenizer.encode(prompt["prompt"])
        raise TypeError("Prompt dictionary must contain text, tokens, or embeddings")
    raise TypeError("Prompt should be a string, list of tokens, or dictionary")


class LLM:
    instances: ClassVar[list[LLM]] = []
    prefill_s = 0.010
    per_token_s = 0.002
    #: The toy model's context length when ``max_model_len`` is not given (vLLM reads the model's config).
    default_max_model_len = 2048

    def __init__(self, model: str, **kwargs: Any) -> None:
        fields = {field.name for field in dataclasses.fields(EngineArgs)}
        unknown = set(kwargs) - fields
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        self.model, self.kwargs = model, kwargs
        self.log_stats = not kwargs.get("disable_log_stats", True)  # LLM() disables stats unless told
        self.state: dict[str, Any] = {"shutdown": False, "calls": [], "use_tqdm": []}
        model_config = ModelConfig(
            kwargs.get("max_model_len") or self.default_max_model_len, kwargs.get("max_logprobs", 20)
        )
        self.llm_engine = LLMEngine(model_config, EngineCore(self.state), Tokenizer())
        self.model_config = self.llm_engine.model_config
        self.toy_model = ToyModel(seed=kwargs.get("seed", 0))
        self.request_counter = itertools.count()
        LLM.instances.append(self)

    def get_tokenizer(self) -> Tokenizer:
        return self.llm_engine.get_tokenizer()

    def generate(
        self,
        prompts: Any,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        use_tqdm: Any = True,
        lora_request: Any = None,
        priority: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        self.state["calls"].append((prompts, sampling_params))
        self.state["use_tqdm"].append(use_tqdm)
        if isinstance(prompts, (dict, str, bytes)) or (
            len(prompts) > 0 and all(isinstance(token, int) for token in prompts)
        ):
            prompts = [prompts]
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise VLLMValidationError(
                f"The lengths of prompts ({len(prompts)}) and params ({len(sampling_params)}) must be the same."
            )
        tokenizer = self.get_tokenizer()
        parsed = [_parse_prompt(prompt, tokenizer) for prompt in prompts]
        for (_, tokens), params in zip(parsed, sampling_params, strict=True):
            self._validate(tokens, params)
        outputs = []
        for index, ((text, tokens), params) in enumerate(zip(parsed, sampling_params, strict=True)):
            outputs.append(self._run_one(str(next(self.request_counter)), index, text, tokens, params))
        return sorted(outputs, key=lambda output: int(output.request_id))

    def _validate(self, tokens: list[int], params: SamplingParams) -> None:
        """vllm/v1/engine/input_processor.py ``_validate_prompt_len`` and ``SamplingParams.verify``."""
        limit = self.model_config.max_model_len
        if not tokens:
            raise VLLMValidationError("The decoder prompt cannot be empty")
        if len(tokens) > limit:
            raise VLLMValidationError(
                f"The decoder prompt (length {len(tokens)}) is longer than the maximum model length of {limit}. "
                "Make sure that `max_model_len` is no smaller than the number of text tokens."
            )
        if len(tokens) == limit:
            raise VLLMValidationError(
                f"The decoder prompt (length {len(tokens)}) plus the number of requested output tokens (at least "
                f"1) is longer than the maximum model length of {limit}. Make sure that `max_model_len` is no "
                "smaller than the number of text tokens (prompt + requested output tokens)."
            )
        for name in ("logprobs", "prompt_logprobs"):
            requested = getattr(params, name)
            requested = len(VOCAB) if requested == -1 else requested
            if requested and requested > self.model_config.max_logprobs:
                raise VLLMValidationError(
                    f"Requested {name.replace('_', ' ')} of {requested}, which is greater than max allowed: "
                    f"{self.model_config.max_logprobs}",
                    parameter=name,
                    value=requested,
                )
        if any(token < 0 or token >= len(VOCAB) for token in tokens):
            raise VLLMValidationError(f"Token id out of vocabulary (size {len(VOCAB)}) in the prompt")

    def _position_logprobs(
        self, container: Any, row: np.ndarray[Any, Any], actual: int, k: int, detokenize: bool
    ) -> None:
        """vllm/logprobs.py ``append_logprobs_for_next_position``: the actual token, then the top ``k``."""
        k = len(row) if k == -1 else k
        top = [int(token) for token in np.argsort(-row, kind="stable")[:k]]
        token_ids = [actual, *top]
        values = [float(row[token]) for token in token_ids]
        rank = int((row >= row[actual]).sum())  # vllm/v1/sample/ops/logprobs.py: ties count against the token
        decoded = [VOCAB[token] if detokenize else None for token in token_ids]
        ranks = itertools.chain((rank,), range(1, k + 1))
        if isinstance(container, FlatLogprobs):
            container.append_fast(token_ids, values, ranks, decoded)
        else:
            container.append(
                {t: Logprob(v, r, d) for t, v, r, d in zip(token_ids, values, ranks, decoded, strict=False)}
            )

    def _run_one(
        self, request_id: str, index: int, text: str | None, prompt: list[int], params: SamplingParams
    ) -> RequestOutput:
        model, tokenizer = self.toy_model, self.get_tokenizer()
        prompt_logprobs: Any = None
        if params.prompt_logprobs is not None:
            prompt_logprobs = FlatLogprobs() if params.flat_logprobs else []
            prompt_logprobs.append(None)  # the first prompt token has no logprob
            for position in range(1, len(prompt)):
                row = model.next_log_probs(prompt[:position])
                self._position_logprobs(
                    prompt_logprobs, row, prompt[position], params.prompt_logprobs, params.detokenize
                )
        sample_logprobs: Any = None
        if params.logprobs is not None:
            sample_logprobs = FlatLogprobs() if params.flat_logprobs else []
        seed = params.seed if params.seed is not None else self.kwargs.get("seed", 0) * 1_000_003 + int(request_id)
        generator = np.random.default_rng(seed)
        max_tokens = params.max_tokens if params.max_tokens is not None else self.model_config.max_model_len
        max_tokens = min(max_tokens, self.model_config.max_model_len - len(prompt))
        stop_ids = set(params.stop_token_ids) | ({EOS} if not params.ignore_eos else set())
        generated: list[int] = []
        output_text, finish_reason, stop_reason = "", "length", None
        cumulative = 0.0
        while len(generated) < max_tokens:
            row = model.next_log_probs(prompt + generated)
            if len(generated) < params.min_tokens:
                row = np.where(np.isin(np.arange(len(row)), list(stop_ids)), -np.inf, row)
            if params.temperature < _GREEDY_BELOW:
                token = int(np.argmax(row))
            else:
                weights = np.exp((row - row.max()) / params.temperature)
                token = int(generator.choice(len(row), p=weights / weights.sum()))
            generated.append(token)
            cumulative += float(row[token])
            if sample_logprobs is not None:
                self._position_logprobs(sample_logprobs, row, token, params.logprobs or 0, params.detokenize)
            if token in stop_ids:  # EOS or a stop token id: kept in token_ids, left out of the text
                finish_reason, stop_reason = "stop", (None if token == EOS and not params.ignore_eos else token)
                break
            if params.detokenize:
                output_text += tokenizer.decode([token], skip_special_tokens=params.skip_special_tokens)
                hit = self._stop_string(output_text, params) if len(generated) >= params.min_tokens else None
                if hit is not None:
                    output_text, stop_reason, finish_reason = hit[0], hit[1], "stop"
                    break
        metrics = None
        if self.log_stats:
            ttft = self.prefill_s * (index + 1)  # a batch's prefills take turns
            metrics = types.SimpleNamespace(
                arrival_time=1.7e9,
                first_token_latency=ttft,
                first_token_ts=100.0 + ttft,
                last_token_ts=100.0 + ttft + self.per_token_s * (len(generated) - 1),
                num_generation_tokens=len(generated),
            )
        completion = CompletionOutput(
            index=0,
            text=output_text,
            token_ids=generated,
            cumulative_logprob=cumulative if params.logprobs is not None else None,
            logprobs=sample_logprobs,
            finish_reason=finish_reason,
            stop_reason=stop_reason,
        )
        return RequestOutput(request_id, text, prompt, prompt_logprobs, [completion], True, metrics)

    @staticmethod
    def _stop_string(text: str, params: SamplingParams) -> tuple[str, str] | None:
        """vllm/v1/engine/detokenizer.py ``check_stop_strings``: the stop string that completes first."""
        found = [(text.find(stop) + len(stop), stop) for stop in params.stop if stop in text]
        if not found:
            return None
        end, stop = min(found, key=lambda hit: hit[0])
        return (text[:end] if params.include_stop_str_in_output else text[: end - len(stop)]), stop


def modules() -> dict[str, types.ModuleType]:
    """The fake ``vllm`` package and the submodules this project (and lm-eval-shaped code) imports."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.33.0"  # type: ignore[attr-defined]
    for name, value in {
        "LLM": LLM,
        "SamplingParams": SamplingParams,
        "TokensPrompt": TokensPrompt,
        "TextPrompt": TextPrompt,
        "RequestOutput": RequestOutput,
        "CompletionOutput": CompletionOutput,
        "EngineArgs": EngineArgs,
    }.items():
        setattr(vllm, name, value)
    submodules = {
        "vllm.engine.arg_utils": {"EngineArgs": EngineArgs},
        "vllm.inputs": {"TokensPrompt": TokensPrompt, "TextPrompt": TextPrompt},
        "vllm.logprobs": {"Logprob": Logprob, "FlatLogprobs": FlatLogprobs},
        "vllm.outputs": {"RequestOutput": RequestOutput, "CompletionOutput": CompletionOutput},
        "vllm.exceptions": {"VLLMValidationError": VLLMValidationError},
    }
    found = {"vllm": vllm, "vllm.engine": types.ModuleType("vllm.engine")}
    for module_name, attributes in submodules.items():
        module = types.ModuleType(module_name)
        for name, value in attributes.items():
            setattr(module, name, value)
        found[module_name] = module
    distributed = types.ModuleType("vllm.distributed")
    distributed.cleaned = 0  # type: ignore[attr-defined]

    def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
        distributed.cleaned += 1  # type: ignore[attr-defined]

    distributed.cleanup_dist_env_and_memory = cleanup_dist_env_and_memory  # type: ignore[attr-defined]
    found["vllm.distributed"] = distributed
    return found


def install(monkeypatch: Any) -> types.ModuleType:
    """Put the fake ``vllm`` (and the submodules the engine imports) into ``sys.modules``."""
    found = modules()
    for name, module in found.items():
        monkeypatch.setitem(sys.modules, name, module)
    LLM.instances.clear()
    return found["vllm"]
