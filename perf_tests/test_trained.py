"""The shipped trained model (two-digit addition, 1.45 M parameters, ``tools/train_addition_model.py``) in F16,
Q8_0, Q4_K_M and Q4_0: speed, memory, accuracy and logit fidelity in one record per quantisation.

The checkpoint is the partially trained one, where 4-bit quantisation visibly costs accuracy. Fidelity is
measured against the F16 model's distributions (taken fresh each run), so the end-of-session trade-off table
shows what each quantisation buys in speed and memory and what it costs in accuracy and KL, the way the study
compares them.
"""

from __future__ import annotations

import pytest

from pytest_llmperf import Workload, paired_test, reference_of
from pytest_llmperf.assets.addition import answer, heldout_pairs, prompt

CHECKPOINT = "partial"
ENGINE = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 256}  # 1.45 M parameters: one thread is plenty
SPEED = Workload(n_prompt=8, n_predict=32, requests=8, warmup=1, repetitions=5, max_repetitions=30, max_seconds=6)
# Teacher-forced over the answers of 200 held-out sums (the question positions were never trained).
FIDELITY_PROMPTS = [(prompt(a, b), answer(a, b)) for a, b in heldout_pairs()[::10]]
TASKS = ["llmperf_addition", "llmperf_addition_mc"]
#: The F16 model's score of every question, once its test has run (the paired comparison below).
F16_DOCUMENTS: dict = {}


@pytest.mark.perf
# A 1.45 M-parameter model decodes in ~0.4 ms per token, mostly Python: measured until sure, within 10% (speed)
# and 15% (latency). Memory is the engine's own buffers as llama.cpp allocates them (engine_mem_gib, exact);
# this process's RSS moved 2-3x with what ran before it (docs/metrics.md, "Host memory") and is reported only.
# Accuracy and fidelity by the defaults: accuracy any drop that the questions that moved make significant
# (docs/accuracy.md).
@pytest.mark.perf_tolerance({"*_tok_s": "10%", "tpot_*": "15%"})
@pytest.mark.parametrize("variant", ["f16", "q8_0", "q4_k_m", "q4_0"])
def test_quantisation_tradeoff(engine_factory, llmperf, lm_eval_scorer, variant):
    reference = reference_of(engine_factory("llama_cpp", model=f"addition-{CHECKPOINT}-f16", **ENGINE),
                             FIDELITY_PROMPTS)
    engine = engine_factory("llama_cpp", model=f"addition-{CHECKPOINT}-{variant}", **ENGINE)
    # Three measuring calls, one record: judged together when the test ends, one baseline file.
    llmperf.measure(engine, SPEED, gate=["completion_tok_s", "tpot_p50", "engine_mem_gib"])
    scores = lm_eval_scorer(engine, TASKS)
    llmperf.fidelity(engine, FIDELITY_PROMPTS, reference=reference)
    # Far above chance (1 in 4 for the multiple choice, ~0 for exact match) in every quantisation.
    assert scores.metrics["llmperf_addition_mc.acc"] > 0.6
    assert scores.metrics["llmperf_addition.exact_match"] > 0.5
    # Each variant is gated against its own baseline; against the F16 model, question by question, Q4_0's drop
    # (0.798 -> 0.779: 60 questions lost, 22 gained) is significant and Q8_0's move (0.798 -> 0.800) is not.
    if variant == "f16":
        F16_DOCUMENTS.update(scores.per_document)
    elif F16_DOCUMENTS and variant in ("q8_0", "q4_0"):
        drop = paired_test(F16_DOCUMENTS["llmperf_addition.exact_match"],
                           scores.per_document["llmperf_addition.exact_match"])
        assert drop is not None
        assert (drop.p_worse < 0.01) == (variant == "q4_0"), drop.describe()
