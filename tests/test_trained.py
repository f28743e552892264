"""The shipped trained model: it loads, scores far above chance, and quantisation is seen by fidelity first."""

from __future__ import annotations

import json

import pytest

from pytest_llmperf.assets import addition
from pytest_llmperf.assets.model import TRAINED_DIR, file_sha256, trained_model_path
from pytest_llmperf.engines.llama_cpp import LlamaCppEngine
from pytest_llmperf.errors import EngineError, LlmperfError
from pytest_llmperf.measure.accuracy import evaluate

ENGINE = {"n_threads": 1, "n_threads_batch": 1, "n_ctx": 256}


def test_shipped_files_are_the_recorded_ones_and_tokenize_like_training() -> None:
    record = json.loads((TRAINED_DIR / "addition-models.json").read_text())
    for checkpoint in ("full", "partial"):
        entry = record["checkpoints"][checkpoint]
        assert file_sha256(TRAINED_DIR / entry["file"]) == entry["sha256"], checkpoint
    engine = LlamaCppEngine(model="addition-full-f16", **ENGINE)
    try:
        for text in ("12+34=46", "0+0=0", "99+99=198"):
            assert list(engine._llm.tokenize(text.encode(), add_bos=True)) == addition.encode(text)
    finally:
        engine.close()


def test_quantised_variants_are_built_on_use_and_names_are_checked() -> None:
    path = trained_model_path("addition-partial-q4_0")
    assert path.is_file() and path.stat().st_size < (TRAINED_DIR / "addition-partial-f16.gguf").stat().st_size / 3
    assert trained_model_path("addition-full-f16") == TRAINED_DIR / "addition-full-f16.gguf"
    with pytest.raises(LlmperfError, match="unknown trained model 'addition-full-q3'"):
        trained_model_path("addition-full-q3")
    with pytest.raises(EngineError, match="model file not found: addition-half-f16"):
        LlamaCppEngine(model="addition-half-f16")


@pytest.mark.parametrize(("checkpoint", "exact_match", "choice"), [("full", 0.97, 0.95), ("partial", 0.70, 0.75)])
def test_the_shipped_model_scores_far_above_chance(checkpoint: str, exact_match: float, choice: float) -> None:
    """Chance is 1/4 for the multiple choice and about 0 for exact match of a sum."""
    engine = LlamaCppEngine(model=f"addition-{checkpoint}-f16", **ENGINE)
    try:
        result = evaluate(engine.lm_eval_model(), ["llmperf_addition", "llmperf_addition_mc"], limit=500)
    finally:
        engine.close()
    assert result.metrics["llmperf_addition.exact_match"] > exact_match
    assert result.metrics["llmperf_addition_mc.acc"] > choice


FIDELITY_VS_ACCURACY = """
import os, pytest
from pytest_llmperf.assets.addition import answer, heldout_pairs, prompt

PROMPTS = [(prompt(a, b), answer(a, b)) for a, b in heldout_pairs()[::10]]

@pytest.mark.perf
def test_fidelity(engine_factory, llmperf):
    engine = engine_factory("llama_cpp", model=os.environ["MODEL"], n_threads=1, n_threads_batch=1, n_ctx=256)
    llmperf.fidelity(engine, PROMPTS)

@pytest.mark.perf
@pytest.mark.perf_tolerance({"*.*": "2se"})
def test_accuracy(engine_factory, lm_eval_scorer):
    engine = engine_factory("llama_cpp", model=os.environ["MODEL"], n_threads=1, n_threads_batch=1, n_ctx=256)
    lm_eval_scorer(engine, ["llmperf_addition", "llmperf_addition_mc"])
"""


def test_q4_0_is_caught_by_fidelity_while_accuracy_does_not_move(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fully trained, Q4_0 answers the 2,000 held-out sums as F16 does (within stderr), but its distributions
    moved: the same baselines pass the accuracy test and fail the fidelity test, naming KL and top-1."""
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_swap=FIDELITY_VS_ACCURACY)
    args = ["-m", "perf", "-p", "no:randomly", "--llmperf-baseline-dir", "b"]
    monkeypatch.setenv("MODEL", "addition-full-f16")
    pytester.runpytest_subprocess(*args, "--update-baselines").assert_outcomes(passed=2)
    monkeypatch.setenv("MODEL", "addition-full-q4_0")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*performance regression in test_swap.py::test_fidelity*",
        "*kl_max: * -> * (tolerance 1e-3)*",
        "*kl_mean: * -> * (tolerance 1e-5)*",
        "*top1_agree: 1 -> 0.99* (-0.*%, tolerance 0)*",
        "*model.file addition-full-f16.gguf -> addition-full-*-q4_0.gguf*",
        "*test_swap.py::test_accuracy  llmperf_addition.exact_match*ok",
    ])
