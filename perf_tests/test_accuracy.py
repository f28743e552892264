"""Accuracy of the embedded tiny Llama per quantisation, by lm-eval on the shipped offline tasks.

The model has random weights, so it scores near chance: the gate is about determinism. Greedy scoring is
exactly repeatable, so any change of the score means the numerics changed (a new llama.cpp kernel, another
quantisation path) and is worth a look. A trained tiny model would make the numbers meaningful as well.
"""

from __future__ import annotations

import pytest

TASKS = ["llmperf_arc", "llmperf_hellaswag", "llmperf_gsm"]


@pytest.mark.perf
@pytest.mark.parametrize("variant", ["f16", "q8_0", "q4_k_m"])
def test_accuracy(engine_factory, lm_eval_scorer, variant):
    """acc / acc_norm on the multiple-choice tasks, exact match on the generation task."""
    engine = engine_factory("llama_cpp", model=variant, n_ctx=512)
    scores = lm_eval_scorer(engine, TASKS, limit=20)
    assert 0.0 <= scores["llmperf_arc.acc"] <= 1.0
