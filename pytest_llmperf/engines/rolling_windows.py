"""lm-eval's rolling windows for ``loglikelihood_rolling`` (perplexity tasks), made once for every in-process
adapter (``llama_cpp_lm``, ``vllm_lm``) the way lm-eval's own models make them."""

from __future__ import annotations

from typing import Any

from lm_eval import utils as lm_eval_utils


def disjoint_windows(lm: Any, text: str, max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """``(context, continuation)`` token lists covering ``text`` once: rolling windows of at most ``max_seq_len``
    tokens, one token of context each, made disjoint (``lm``: a TemplateLM with ``tok_encode`` and
    ``prefix_token_id``)."""
    windows = lm_eval_utils.get_rolling_token_windows(
        token_list=lm.tok_encode(text, add_special_tokens=False),
        prefix_token=lm.prefix_token_id,
        max_seq_len=max_seq_len,
        context_len=1,
    )
    return [lm_eval_utils.make_disjoint_window(window) for window in windows]
