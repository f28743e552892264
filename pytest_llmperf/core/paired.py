"""Paired accuracy verdicts: the same documents scored before and after, compared document by document.

An accuracy score is a mean over documents. When the baseline and the current run scored the same documents
(the same task files, limit and seed: the same ``key``), a change is judged on the documents that moved, not
on the two means: a model that lost 60 questions and gained 23 lost something, even where the means differ by
less than their standard errors (those describe the *choice* of questions, which is the same on both sides).

The test is exact and one-sided. With ``losses`` documents scored lower now and ``gains`` scored higher (ties
dropped), a drop is significant when ``P(X >= losses)`` for ``X ~ Binomial(losses + gains, 1/2)`` is below the
significance: McNemar's exact test for 0/1 scores (acc, exact_match), the sign test for graded ones
(TruthfulQA-mc2's probability mass). Under the null of no change each moved document is equally likely to
have moved either way, so a false alarm has probability at most the significance.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: The default significance of the paired test: a drop whose one-sided p-value is below this is a regression.
#: One in a hundred unchanged metrics could alarm by chance at most (and none where no document moved: a
#: deterministic engine whose numerics did not change moves none).
SIGNIFICANCE = 0.01


@dataclass(frozen=True)
class Documents:
    """One score per document, in document order, and ``key``, a digest of which documents they are."""

    scores: tuple[float, ...]
    key: str

    @classmethod
    def of(cls, scores: Iterable[float], document_ids: Iterable[object]) -> Documents:
        """Scores with the key of their documents (lm-eval's ``doc_hash`` of each, in order)."""
        digest = hashlib.sha256()
        for document in document_ids:
            digest.update(str(document).encode())
            digest.update(b"\0")
        return cls(tuple(float(score) for score in scores), digest.hexdigest()[:16])

    @property
    def binary(self) -> bool:
        return all(score in (0.0, 1.0) for score in self.scores)

    def to_json(self) -> dict[str, Any]:
        """``{"key": ..., "scores": "0110..."}`` for 0/1 scores (one short line in a diff), else a list."""
        scores: str | list[float] = (
            "".join("1" if score else "0" for score in self.scores) if self.binary else list(self.scores)
        )
        return {"key": self.key, "scores": scores}

    @classmethod
    def from_json(cls, data: object) -> Documents:
        """The inverse of :meth:`to_json`; raises ``ValueError`` saying what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("key"), str):
            raise ValueError("'documents' must be an object with a 'key' and 'scores'")
        raw = data.get("scores")
        if isinstance(raw, str):
            if set(raw) - {"0", "1"}:
                raise ValueError("'documents.scores' as a string holds only 0 and 1")
            return cls(tuple(float(ch) for ch in raw), data["key"])
        if isinstance(raw, list) and all(
            isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score) for score in raw
        ):
            return cls(tuple(float(score) for score in raw), data["key"])
        raise ValueError("'documents.scores' must be a string of 0/1 or a list of finite numbers")


def binomial_tail(k: int, n: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, 1/2)``: the one-sided (greater) p-value of the exact binomial test
    (``scipy.stats.binomtest``) of ``k`` successes in ``n`` trials, which is McNemar's exact test when the ``n``
    trials are the discordant pairs."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    from scipy import stats  # scipy loads only when a verdict needs it, not with the plugin

    return float(stats.binomtest(k, n, 0.5, alternative="greater").pvalue)


@dataclass(frozen=True)
class PairedTest:
    """How the documents moved between two runs, and how unlikely that is without a change."""

    losses: int
    gains: int
    documents: int
    #: One-sided p-values: of this many losses (``p_worse``) or gains (``p_better``) by chance.
    p_worse: float
    p_better: float
    binary: bool

    def describe(self) -> str:
        test = "McNemar exact" if self.binary else "sign test"
        return (f"{self.losses} of {self.documents} documents scored worse, {self.gains} better "
                f"({test}: p={self.p_worse:.2g} for the drop, {self.p_better:.2g} for the gain)")


def paired_test(baseline: Documents, current: Documents, higher_is_better: bool = True) -> PairedTest | None:
    """The paired test of ``current`` against ``baseline``; None when they did not score the same documents."""
    if baseline.key != current.key or len(baseline.scores) != len(current.scores):
        return None
    sign = 1.0 if higher_is_better else -1.0
    losses = sum(1 for before, now in zip(baseline.scores, current.scores, strict=True) if sign * (now - before) < 0)
    gains = sum(1 for before, now in zip(baseline.scores, current.scores, strict=True) if sign * (now - before) > 0)
    moved = losses + gains
    return PairedTest(
        losses, gains, len(current.scores), binomial_tail(losses, moved), binomial_tail(gains, moved),
        baseline.binary and current.binary,
    )

