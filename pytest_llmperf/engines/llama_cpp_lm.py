"""lm-eval's ``LM`` interface on an in-process ``llama_cpp.Llama`` (imported only when accuracy is scored).

It subclasses lm-eval's ``TemplateLM``, so requests are split into context and continuation tokens exactly
as lm-eval's Hugging Face model does (trailing context whitespace moves to the continuation; the
continuation is what tokenising ``context + continuation`` adds after the context's tokens; an empty context
is conditioned on BOS). Scores are log-softmax over llama.cpp's logits:

- the context is decoded in one batch; each continuation token then in a batch of its own, whose logits
  predict the next one (an engine built without ``logits_all`` keeps only the last row of logits);
- the KV cache keeps the longest prefix shared with the previous request (the choices of one question share
  their context), the rest is removed before decoding;
- ``generate_until`` is greedy ``create_completion`` with EOS allowed, cut at the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM

from pytest_llmperf.core import progress
from pytest_llmperf.engines.rolling_windows import disjoint_windows


def _log_softmax(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - float(np.log(np.exp(shifted).sum()))


class LlamaCppLM(TemplateLM):  # type: ignore[misc]
    """Scores lm-eval requests with the ``llama_cpp.Llama`` of the engine under test."""

    def __init__(self, llama: Any) -> None:
        super().__init__()
        import llama_cpp

        self._llama_cpp = llama_cpp
        self._llm = llama
        self._n_vocab = llama.n_vocab()
        self.max_length = llama.n_ctx()

    @property
    def eot_token_id(self) -> int:
        return int(self._llm.token_eos())

    @property
    def prefix_token_id(self) -> int:
        return int(self._llm.token_bos())

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        tokens: list[int] = self._llm.tokenize(string.encode("utf-8"), add_bos=add_special_tokens is not False)
        return tokens

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return bytes(self._llm.detokenize(list(tokens))).decode("utf-8", errors="replace")

    # -- scoring ------------------------------------------------------------------------------------------

    def _last_logits(self) -> np.ndarray[Any, Any]:
        pointer = self._llama_cpp.llama_get_logits_ith(self._llm.ctx, -1)
        logits: np.ndarray[Any, Any] = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,)).copy()
        return logits

    def _decode_from(self, tokens: list[int], start: int) -> None:
        """Make the KV cache hold ``tokens[:start+1]``, decoding only what differs from what it holds."""
        held = self._llm.n_tokens
        shared = 0
        limit = min(held, start)  # keep at most tokens[:start]: the logits of tokens[start] are needed
        while shared < limit and self._llm.input_ids[shared] == tokens[shared]:
            shared += 1
        self._llm.n_tokens = shared
        self._llm.eval(tokens[shared : start + 1])

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        whole = (context + continuation)[-(self.max_length + 1) :]
        first = len(whole) - len(continuation) - 1  # position whose logits predict continuation[0]
        if first < 0:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit n_ctx={self.max_length}")
        self._decode_from(whole[:-1], first)
        total, greedy = 0.0, True
        for offset, token in enumerate(continuation):
            if offset:
                self._llm.eval([continuation[offset - 1]])
            log_probs = _log_softmax(self._last_logits())
            total += float(log_probs[token])
            greedy = greedy and int(np.argmax(log_probs)) == token
        return total, greedy

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        results = []
        for done, (cache_key, context, continuation) in enumerate(requests):
            progress.report(f"lm-eval loglikelihood {done + 1}/{len(requests)}")
            result = self._score(context, continuation)
            self.cache_hook.add_partial("loglikelihood", cache_key, result)
            results.append(result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            total = sum(self._score(context, predicted)[0]
                        for context, predicted in disjoint_windows(self, text, self.max_length))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        results = []
        for done, request in enumerate(requests):
            progress.report(f"lm-eval generate_until {done + 1}/{len(requests)}")
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            max_tokens = int(kwargs.pop("max_gen_toks", kwargs.pop("max_new_tokens", 256)))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            self._llm.reset()
            completion = self._llm.create_completion(
                prompt=context, max_tokens=max_tokens, temperature=temperature, stop=list(until) or None
            )
            text = completion["choices"][0]["text"]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            results.append(text)
        return results
