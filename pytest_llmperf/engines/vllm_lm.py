"""lm-eval's ``LM`` interface on the engine's own ``vllm.LLM`` (imported only when accuracy is scored).

lm-eval's ``vllm`` model type builds an ``LLM`` of its own: next to the engine's, that loads the model twice and
the two fight over GPU memory. This thin ``TemplateLM`` scores with the ``LLM`` already built, the way
lm-eval's ``lm_eval/models/vllm_causallms.py`` does:

- tokens from ``LLM.get_tokenizer()`` (an HF-like tokenizer): special tokens added unless the text already starts
  with the prefix token's text; ``prefix_token_id`` is BOS, else EOS; ``max_length`` is
  ``llm_engine.model_config.max_model_len``;
- log-likelihood: ``generate`` of token prompts with ``SamplingParams(temperature=0, prompt_logprobs=1,
  max_tokens=1, detokenize=False)``, at most ``max_length - 1`` tokens (vLLM needs room for one generated token;
  a longer request loses its oldest context tokens); the score is the sum of ``prompt_logprobs[i][token].logprob``
  over the continuation, greedy when each continuation token is the argmax of its position's entries (the
  token and the top-1). Works on both ``list[dict[int, Logprob] | None]`` and ``FlatLogprobs``, whose position
  0 reads ``{}``: only continuation positions (never 0) are read;
- rolling log-likelihood: lm-eval's rolling windows of ``max_length - 2`` tokens after the prefix token;
- ``generate_until``: ``SamplingParams(max_tokens=max_gen_toks, stop=until + [EOS text], temperature=0.0,
  skip_special_tokens=False, spaces_between_special_tokens=False, ...)`` from lm-eval's own helpers, the context
  cut from the left to leave ``max_gen_toks``; the text is ``outputs[0].text`` cut at the first stop string.

Requests go to ``LLM.generate`` ``batch_size`` at a time (``"auto"``: all in one call, as lm-eval does; vLLM
batches them either way), in the order given; progress is reported after each call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    maybe_truncate,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

from pytest_llmperf.core import progress
from pytest_llmperf.engines.rolling_windows import disjoint_windows
from pytest_llmperf.errors import EngineError

#: Requests per ``LLM.generate`` call: enough to fill vLLM's default batch (``max_num_seqs`` 256), few enough
#: that progress shows while a task runs.
BATCH_SIZE = 256
#: lm-eval's default ``max_gen_toks`` for vLLM.
MAX_GEN_TOKS = 256


def _logprob_value(entry: Any) -> float:
    # A vllm.logprobs.Logprob; older vLLMs gave bare floats, which lm-eval still accepts.
    return float(getattr(entry, "logprob", entry))


def continuation_score(tokens: Sequence[int], prompt_logprobs: Any, ctxlen: int) -> tuple[float, bool]:
    """Sum of the log-probabilities of ``tokens[ctxlen:]``, and whether each was its position's argmax.

    ``prompt_logprobs`` is ``RequestOutput.prompt_logprobs`` for ``tokens``: one entry per token, each a
    ``{token_id: Logprob}`` mapping (a plain list or vLLM's ``FlatLogprobs``; position 0 is ``None`` or ``{}``).
    """
    total, greedy = 0.0, True
    for position in range(ctxlen, len(tokens)):
        entries = prompt_logprobs[position]
        token = tokens[position]
        if not entries or token not in entries:
            raise EngineError(f"vLLM returned no prompt logprob for token {token} at position {position}")
        values = {candidate: _logprob_value(entry) for candidate, entry in entries.items()}
        total += values[token]
        greedy = greedy and max(values, key=values.__getitem__) == token  # first of equals wins, as in lm-eval
    return total, greedy


class VllmLM(TemplateLM):  # type: ignore[misc]
    """Scores lm-eval requests with the ``vllm.LLM`` of the engine under test."""

    def __init__(self, llm: Any, batch_size: int | str = BATCH_SIZE, max_gen_toks: int = MAX_GEN_TOKS) -> None:
        super().__init__()
        import vllm

        self._vllm = vllm
        self._llm = llm
        if batch_size != "auto" and not (isinstance(batch_size, int) and batch_size >= 1):
            raise EngineError(f"vllm lm-eval model_args batch_size={batch_size!r}: give a whole number >= 1 or 'auto'")
        self.batch_size = batch_size
        self.max_gen_toks = int(max_gen_toks)
        self.tokenizer = llm.get_tokenizer()
        self.max_length = int(llm.llm_engine.model_config.max_model_len)

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return int(bos if bos is not None else self.tokenizer.eos_token_id)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if not string:
            return []
        if add_special_tokens is None:  # lm-eval: no second BOS for a text that starts with one
            add_special_tokens = not string.startswith(self.tokenizer.decode([self.prefix_token_id]))
        tokens: list[int] = list(self.tokenizer.encode(string, add_special_tokens=add_special_tokens))
        return tokens

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(tokens)))

    def _per_call(self, requests: int) -> int:
        return max(requests, 1) if self.batch_size == "auto" else int(self.batch_size)

    def _generate(self, prompts: list[list[int]], params: Any) -> list[Any]:
        token_prompts = [self._vllm.TokensPrompt(prompt_token_ids=tokens) for tokens in prompts]
        outputs: list[Any] = self._llm.generate(token_prompts, params, use_tqdm=False)
        return outputs

    # -- scoring ------------------------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        longest = self.max_length - 1  # vLLM rejects a prompt that leaves no room for one generated token
        params = self._vllm.SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        results: list[tuple[float, bool]] = []
        per_call = self._per_call(len(requests))
        for start in range(0, len(requests), per_call):
            chunk = requests[start : start + per_call]
            prompts, ctxlens = [], []
            for _, context, continuation in chunk:
                ctxlen = len(context) - max(0, len(context) + len(continuation) - longest)
                if ctxlen < 1:
                    raise EngineError(
                        f"an lm-eval continuation of {len(continuation)} tokens does not fit the vllm engine's "
                        f"max_model_len={self.max_length} (at most {longest - 1} tokens after one of context)"
                    )
                prompts.append((context + continuation)[-longest:])
                ctxlens.append(ctxlen)
            outputs = self._generate(prompts, params)
            for output, tokens, ctxlen, (cache_key, _, _) in zip(outputs, prompts, ctxlens, chunk, strict=True):
                if output.prompt_logprobs is None:
                    raise EngineError("vLLM returned no prompt_logprobs for a request that asked for them")
                result = continuation_score(tokens, output.prompt_logprobs, ctxlen)
                if cache_key is not None:  # rolling windows have none: their request's total is cached instead
                    self.cache_hook.add_partial("loglikelihood", cache_key, result)
                results.append(result)
            progress.report(f"lm-eval loglikelihood {len(results)}/{len(requests)}")
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[None, list[int], list[int]]] = []
        counts = []
        for request in requests:
            (text,) = request.args
            # One position for the context token, one for the generated one.
            found = [(None, *window) for window in disjoint_windows(self, text, self.max_length - 2)]
            windows += found
            counts.append(len(found))
        scores = iter(self._loglikelihood_tokens(windows))
        results = []
        for request, count in zip(requests, counts, strict=True):
            total = sum(next(scores)[0] for _ in range(count))
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
            results.append(total)
        return results

    def _generation_params(self, gen_kwargs: dict[str, Any], eos: str | None) -> tuple[Any, list[str], int]:
        """lm-eval's ``VLLM.modify_gen_kwargs``: ``SamplingParams`` keywords, stop strings and max_gen_toks."""
        normalized: dict[str, Any] = dict(normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks))
        until = handle_stop_sequences(normalized.pop("until", None), eos=eos)
        max_gen_toks = int(normalized.pop("max_gen_toks", self.max_gen_toks))
        normalized.pop("do_sample", None)
        keywords = {"skip_special_tokens": False, "spaces_between_special_tokens": False} | normalized
        return keywords, until, max_gen_toks

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        # lm-eval: the EOS token's text, or the tokenizer's eos_token where it decodes to "" (ChatGLM); never ""
        # (vLLM rejects an empty stop string)
        eos = self.tok_decode([self.eot_token_id]) or getattr(self.tokenizer, "eos_token", None) or None
        results: list[str] = []
        per_call = self._per_call(len(requests))
        for start in range(0, len(requests), per_call):
            chunk = requests[start : start + per_call]
            prompts, params, stops = [], [], []
            for request in chunk:
                context, gen_kwargs = request.args
                keywords, until, max_gen_toks = self._generation_params(gen_kwargs, eos)
                tokens, max_gen_toks = maybe_truncate(
                    self.tok_encode(context),
                    max_gen_toks=max_gen_toks,
                    max_model_len=self.max_length,
                    side="left",
                    verbose=False,
                )
                prompts.append(tokens)
                params.append(self._vllm.SamplingParams(max_tokens=max_gen_toks, stop=until, **keywords))
                stops.append(until)
            outputs = self._generate(prompts, params)
            for output, request, until in zip(outputs, chunk, stops, strict=True):
                text = postprocess_generated_text(output.outputs[0].text, until, None)
                self.cache_hook.add_partial("generate_until", request.args, text)
                results.append(text)
            progress.report(f"lm-eval generate_until {len(results)}/{len(requests)}")
        return results
