"""The paired accuracy verdict: exact p-values of known contingency tables, and verdicts on document scores."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from pytest_llmperf.core.baseline import Baseline, MetricRecord, load_baseline, record_baseline
from pytest_llmperf.core.paired import Documents, binomial_tail, paired_test
from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable
from pytest_llmperf.core.verdict import MetricComparison, Verdict, judge
from pytest_llmperf.errors import BaselineError

DEFAULTS = ToleranceTable([("defaults", DEFAULT_TOLERANCES)])


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (9, 10, Fraction(11, 1024)),  # McNemar: 9 discordant one way, 1 the other
        (10, 10, Fraction(1, 1024)),
        (3, 3, Fraction(1, 8)),
        (5, 10, Fraction(638, 1024)),  # (252 + 210 + 120 + 45 + 10 + 1) / 2**10
        (0, 0, Fraction(1)),  # nothing moved: no evidence
        (0, 7, Fraction(1)),
        (8, 7, Fraction(0)),
    ],
)
def test_binomial_tail_of_known_tables(k: int, n: int, expected: Fraction) -> None:
    assert binomial_tail(k, n) == pytest.approx(float(expected), rel=1e-12)


def test_large_tables_do_not_overflow_and_are_symmetric() -> None:
    assert binomial_tail(1500, 3000) + binomial_tail(1501, 3000) == pytest.approx(1.0)
    assert binomial_tail(3000, 3000) == 0.0  # 2**-3000 is below the smallest float
    assert 0 < binomial_tail(2000, 3000) < 1e-70


def _documents(lost: int, gained: int, same_right: int, same_wrong: int, key: str = "k") -> tuple[Documents, Documents]:
    """A 2x2 table as document scores: baseline right / current wrong (lost), the reverse (gained), ties."""
    before = [1.0] * lost + [0.0] * gained + [1.0] * same_right + [0.0] * same_wrong
    after = [0.0] * lost + [1.0] * gained + [1.0] * same_right + [0.0] * same_wrong
    return Documents(tuple(before), key), Documents(tuple(after), key)


def _judge(
    before: Documents, after: Documents, tolerance: object = None, significance: float = 0.01
) -> MetricComparison:
    name = "llmperf_addition.exact_match"
    table = DEFAULTS if tolerance is None else DEFAULTS.with_layer("test", {name: tolerance})
    stored = MetricRecord(sum(before.scores) / len(before.scores), documents=before)
    current = sum(after.scores) / len(after.scores)
    return judge(name, stored, current, table.for_metric(name), current_documents=after, significance=significance)


def test_a_real_drop_smaller_than_the_old_tolerance_is_a_regression() -> None:
    # The shape of the half-trained addition model's Q4_0 run: 0.798 -> 0.779 on 2000 questions.
    before, after = _documents(lost=60, gained=22, same_right=1536, same_wrong=382)
    comparison = _judge(before, after)
    assert comparison.verdict is Verdict.REGRESSED
    assert comparison.paired is not None and comparison.paired.p_worse < 1e-4
    assert "60 of 2000 documents scored worse, 22 better (McNemar exact" in comparison.describe()
    # Unpaired, the same two means are well within 2 standard errors of their difference.
    assert _judge(before, Documents(after.scores, "other documents"), tolerance="0.02").verdict is Verdict.OK


def test_a_few_flipped_documents_are_not_a_regression() -> None:
    before, after = _documents(lost=9, gained=10, same_right=1580, same_wrong=401)  # 0.800 -> 0.8005
    assert _judge(before, after).verdict is Verdict.OK
    before, after = _documents(lost=3, gained=1, same_right=1590, same_wrong=406)
    comparison = _judge(before, after)
    assert comparison.verdict is Verdict.OK and not comparison.sure
    assert "not significantly document by document" in comparison.note


def test_identical_documents_pass_and_significance_is_the_tests_to_set() -> None:
    before, _ = _documents(lost=0, gained=0, same_right=10, same_wrong=5)
    assert _judge(before, before).verdict is Verdict.OK
    before, after = _documents(lost=9, gained=1, same_right=50, same_wrong=40)  # p = 11/1024 = 0.0107
    assert _judge(before, after, significance=0.01).verdict is Verdict.OK
    assert _judge(before, after, significance=0.05).verdict is Verdict.REGRESSED


def test_a_tolerance_is_a_minimum_effect_beside_the_test() -> None:
    before, after = _documents(lost=60, gained=22, same_right=1536, same_wrong=382)  # -0.019
    assert _judge(before, after, tolerance="0.05").verdict is Verdict.OK
    assert _judge(before, after, tolerance="0.01").verdict is Verdict.REGRESSED


def test_graded_scores_use_the_sign_test() -> None:
    before = Documents((0.5, 0.6, 0.7, 0.8, 0.9, 0.55, 0.65, 0.75, 0.85, 0.95), "k")
    after = Documents(tuple(score - 0.1 for score in before.scores), "k")
    test = paired_test(before, after)
    assert test is not None and not test.binary and (test.losses, test.gains) == (10, 0)
    assert test.p_worse == pytest.approx(1 / 1024)
    assert "sign test" in test.describe()


def test_other_documents_are_not_paired() -> None:
    before, after = _documents(lost=1, gained=0, same_right=5, same_wrong=5)
    assert paired_test(before, Documents(after.scores, "another key")) is None
    assert paired_test(before, Documents(after.scores[:-1], "k")) is None


def test_documents_round_trip_through_a_baseline_file(tmp_path: Path) -> None:
    binary = Documents((1.0, 0.0, 1.0), "abc")
    graded = Documents((0.25, 0.5), "def")
    path = tmp_path / "b.json"
    record_baseline(path, Baseline("t.py::t", {
        "task.acc": MetricRecord(2 / 3, documents=binary), "task.mc2": MetricRecord(0.375, documents=graded),
    }))
    raw = json.loads(path.read_text())
    assert raw["metrics"]["task.acc"]["documents"] == {"key": "abc", "scores": "101"}
    assert raw["metrics"]["task.mc2"]["documents"] == {"key": "def", "scores": [0.25, 0.5]}
    stored = load_baseline(path)
    assert stored is not None
    loaded = stored.for_hardware(None)
    assert loaded is not None
    assert loaded.metrics["task.acc"].documents == binary and loaded.metrics["task.mc2"].documents == graded


@pytest.mark.parametrize(
    "documents", [{"key": "a", "scores": "10x"}, {"scores": "10"}, {"key": "a", "scores": [1, None]}]
)
def test_malformed_documents_name_the_file_and_metric(tmp_path: Path, documents: object) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"schema": 1, "test": "t.py::t", "metrics": {
        "task.acc": {"value": 0.5, "documents": documents}}}))
    with pytest.raises(BaselineError, match=r"b\.json: at metrics\['task\.acc'\]\.documents"):
        stored = load_baseline(path)
        assert stored is not None
        stored.for_hardware(None)
