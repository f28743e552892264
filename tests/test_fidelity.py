"""Logit fidelity: the KL / top-1 arithmetic, the stored reference, and the gate through pytest."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.fidelity import (
    FullDistribution,
    TopDistribution,
    check_reference,
    compare_to_reference,
    make_reference,
)


def full(probabilities: list[float]) -> FullDistribution:
    return FullDistribution(np.log(np.asarray(probabilities, dtype=np.float64)))


def test_identical_distributions_have_zero_kl_and_full_agreement() -> None:
    rows = [[full([0.7, 0.2, 0.1]), full([0.1, 0.3, 0.6])]]
    reference = make_reference(["p"], rows, top_k=3, key_kind="id")
    result = compare_to_reference(reference, rows, "id")
    assert result.kl_mean == pytest.approx(0, abs=1e-9) and result.kl_max == pytest.approx(0, abs=1e-9)
    assert result.top1_agree == 1.0
    assert result.ref_logprob_mean == pytest.approx((math.log(0.7) + math.log(0.6)) / 2, abs=1e-5)
    assert result.positions == 2 and result.truncated == 0


def test_kl_is_exact_when_the_top_k_hold_all_the_mass_and_a_rest_bucket_otherwise() -> None:
    p, q = [0.7, 0.2, 0.1], [0.4, 0.5, 0.1]
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    reference = make_reference(["p"], [[full(p)]], top_k=3, key_kind="id")
    result = compare_to_reference(reference, [[full(q)]], "id")
    assert result.kl_mean == pytest.approx(exact, abs=1e-5)
    assert result.top1_agree == 0.0  # the top token moved from 0 to 1
    assert result.ref_logprob_mean == pytest.approx(math.log(0.4))
    # Top-2 only: tokens 0 and 1 one by one, token 2 as the rest bucket (0.1 vs 0.1): the same KL here.
    reference = make_reference(["p"], [[full(p)]], top_k=2, key_kind="id")
    assert compare_to_reference(reference, [[full(q)]], "id").kl_mean == pytest.approx(exact, abs=1e-5)


def test_server_top_k_with_a_missing_token_uses_the_floor_and_counts_it() -> None:
    reference = make_reference(["p"], [[TopDistribution({"a": math.log(0.6), "b": math.log(0.3)})]], 2, "text")
    current = [[TopDistribution({"a": math.log(0.6), "c": math.log(0.2)})]]  # "b" fell out of the top-2
    result = compare_to_reference(reference, current, "text")
    assert result.truncated == 1
    # b's current log-probability is bounded by the floor (log 0.2): KL is that lower bound.
    bound = 0.3 * math.log(0.3 / 0.2) + 0.1 * math.log(0.1 / max(1e-12, 1 - 0.6 - 0.2))
    assert result.kl_mean == pytest.approx(bound, abs=1e-5)


def test_mismatches_are_named() -> None:
    reference = make_reference(["p"], [[full([0.5, 0.5])]], 2, "id")
    with pytest.raises(LlmperfError, match="token id keys and this engine reports token text keys"):
        compare_to_reference(reference, [[TopDistribution({"a": -0.1})]], "text")
    with pytest.raises(LlmperfError, match="has 2 positions now and 1 in the reference"):
        compare_to_reference(reference, [[full([0.5, 0.5]), full([0.5, 0.5])]], "id")
    for bad in ([], {"prompts": ["a"], "positions": [[[["#1"], [0.5]]]], "keys": "id"},
                {"prompts": ["a"], "positions": [], "keys": "id"}, {**reference, "keys": "bytes"}):
        with pytest.raises(LlmperfError, match=r"b\.json: "):
            check_reference(bad, "b.json")
    assert check_reference(json.loads(json.dumps(reference)), "b.json") == reference


FIDELITY_TEST = """
import os, pytest

@pytest.mark.perf
def test_fidelity(engine_factory, llmperf):
    engine = engine_factory("llama_cpp", model=os.environ["FIDELITY_MODEL"], n_threads=1)
    result = llmperf.fidelity(engine, ["The capital of France is Paris.", "One two three four five six"], top_k=8)
    print("fidelity:", result.metrics)
"""


def test_swapping_the_model_file_under_the_same_baseline_fails_naming_kl_and_top1(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_fidelity=FIDELITY_TEST)
    args = ["-m", "perf", "-s", "--llmperf-baseline-dir", "b"]
    monkeypatch.setenv("FIDELITY_MODEL", "f16")
    pytester.runpytest_subprocess(*args, "--update-baselines").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / "b" / "test_fidelity" / "test_fidelity.json").read_text())
    assert stored["reference"]["top_k"] == 8 and len(stored["reference"]["positions"]) == 2
    assert stored["metrics"]["top1_agree"]["value"] == 1.0
    # The same model again: the numbers are deterministic, the check passes.
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    # Another quantisation of the same model under the same baseline: the distributions moved.
    monkeypatch.setenv("FIDELITY_MODEL", "q4_k_m")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*performance regression in test_fidelity.py::test_fidelity*",
        "*kl_max: * -> * (tolerance 1e-3)*",
        "*kl_mean: * -> * (tolerance 1e-5)*",
        "*top1_agree: 1 -> 0.* (-*%, tolerance 0)*",
        "*model.file *-f16.gguf -> *-q4_k_m.gguf*",
    ])
    # A baseline without the reference (hand-edited, or recorded before fidelity was checked) is not compared
    # with the engine itself (that would always pass): the test says what is missing.
    path = pytester.path / "b" / "test_fidelity" / "test_fidelity.json"
    stored = json.loads(path.read_text())
    del stored["reference"]
    path.write_text(json.dumps(stored))
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_fidelity.json has no fidelity reference*--update-baselines*"])
