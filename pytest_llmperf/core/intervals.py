"""Distribution-free confidence intervals for the verdicts, exact, on scipy.stats: nothing here assumes normal or
equal-spread noise, and no interval claims more confidence than its test gives.

- ``median_interval``: the interval of one sample's median from its order statistics: the k-th smallest and
  k-th largest values, which is the confidence set of the two-sided exact **sign test** (k from the
  Binomial(n, 1/2) distribution, ``scipy.stats.binom``). It decides when a measurement without a baseline is
  precise enough (``measure until sure`` while recording), and gives A/B's paired interval.
- ``shift_interval``: the Hodges-Lehmann estimate of how far ``current`` moved from ``baseline`` and its Moses
  interval: the order statistics of the m x n pairwise differences, cut by the exact null distribution of the
  two-sided **Mann-Whitney U test** (``scipy.stats.mannwhitneyu(method="exact")``). The interval is the set of
  shifts that test does not reject. On log values (``relative=True``) the shift is a ratio current/baseline.
- ``paired_interval``: the median of per-pair ratios b/a and its sign-test interval, for interleaved A/B runs
  where each pair shares the machine's state.

An interval's ``level`` is its exact coverage: at least the level asked for (the distributions are discrete, so
usually a little more). When the samples are too few for the level asked (2 repetitions a side cannot give a
90% shift interval: the widest one, from the smallest to the largest difference, covers 4 shifts in 6), the
functions return None rather than a narrower claim; ``fewest_for`` says how many are needed.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def _stats() -> Any:
    """scipy.stats, imported when an interval is first needed (not with the plugin)."""
    from scipy import stats

    return stats


@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence interval (``low <= estimate <= high``); ``level``: the interval's exact
    coverage (two-sided), when known."""

    estimate: float
    low: float
    high: float
    level: float | None = None

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


@functools.lru_cache(maxsize=256)
def sign_rank(n: int, level: float) -> tuple[int, float] | None:
    """The largest k with ``[x_(k), x_(n+1-k)]`` (1-based order statistics of n values) covering the median with
    probability >= ``level``, and that probability: ``1 - 2 P(B <= k - 1)``, B ~ Binomial(n, 1/2) (the two-sided
    exact sign test's acceptance region). None when even ``[min, max]`` covers less (n too small)."""
    best = None
    for k in range(1, n // 2 + 1):
        coverage = 1.0 - 2.0 * float(_stats().binom.cdf(k - 1, n, 0.5))
        if coverage < level:
            break
        best = (k, coverage)
    return best


def median_interval(samples: Sequence[float], level: float = 0.95) -> Interval | None:
    """The sample median and its exact sign-test interval at ``level`` (two-sided); None when ``samples`` are too
    few for ``level`` (at 95%, 6 samples are the fewest; at 90%, 5)."""
    values = sorted(samples)
    rank = sign_rank(len(values), level)
    if rank is None:
        return None
    k, coverage = rank
    return Interval(statistics.median(values), values[k - 1], values[len(values) - k], coverage)


def u_cdf(u: int, m: int, n: int) -> float:
    """``P(U <= u)`` for the Mann-Whitney U statistic of samples of sizes ``m`` and ``n`` with no shift: scipy's
    exact one-sided p-value of two samples whose U is ``u`` (each of the m values above ``u`` of the n in all)."""
    above = [min(n, max(0, u - n * i)) for i in range(m)]
    x = [count - 0.5 for count in above]
    return float(_stats().mannwhitneyu(x, list(range(n)), alternative="less", method="exact").pvalue)


@functools.lru_cache(maxsize=1024)
def moses_cut(m: int, n: int, level: float) -> tuple[int, float] | None:
    """How many of the m x n ordered differences to cut from each end for a two-sided Moses interval of at
    least ``level``, and its exact coverage ``1 - 2 P(U <= cut)``; None when no interval reaches ``level``."""
    alpha = 1.0 - level
    if 2.0 * u_cdf(0, m, n) > alpha + 1e-12:
        return None
    low, high = 0, (m * n - 1) // 2  # the largest cut that leaves an interval
    while low < high:  # the largest cut whose two tails hold at most alpha: P(U <= cut) grows with the cut
        middle = (low + high + 1) // 2
        if 2.0 * u_cdf(middle, m, n) <= alpha + 1e-12:
            low = middle
        else:
            high = middle - 1
    return low, 1.0 - 2.0 * u_cdf(low, m, n)


def fewest_for(level: float) -> int:
    """The fewest repetitions a side (equal sizes) with which ``shift_interval`` reaches ``level``."""
    n = 2
    while moses_cut(n, n, level) is None:
        n += 1
    return n


def shift_interval(
    baseline: Sequence[float], current: Sequence[float], level: float = 0.95, *, relative: bool = True
) -> Interval | None:
    """How ``current`` differs from ``baseline``: a ratio (``relative``; every value must be > 0) or a difference,
    as Hodges-Lehmann estimate and exact Moses interval at ``level`` (two-sided; each bound a one-sided
    ``(1 + level) / 2`` bound). None when either side has fewer than 2 values, when ``relative`` and a value is
    not positive, or when the samples are too few for ``level`` (``fewest_for``)."""
    if len(baseline) < 2 or len(current) < 2:
        return None
    if relative:
        if min(baseline) <= 0 or min(current) <= 0:
            return None
        a, b = [math.log(x) for x in baseline], [math.log(x) for x in current]
    else:
        a, b = list(baseline), list(current)
    found = moses_cut(len(a), len(b), level)
    if found is None:
        return None
    cut, coverage = found
    differences = sorted(y - x for y in b for x in a)
    low, high, estimate = differences[cut], differences[-cut - 1], statistics.median(differences)
    if relative:
        return Interval(math.exp(estimate), math.exp(low), math.exp(high), coverage)
    return Interval(estimate, low, high, coverage)


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval | None:
    """The median of the ratios b_i / a_i of measurements taken side by side, and its exact sign-test interval at
    ``level`` (two-sided); None when the pairs are too few for ``level`` or a value is not positive."""
    if len(a) != len(b) or not a or min(a) <= 0 or min(b) <= 0:
        return None
    return median_interval([y / x for x, y in zip(a, b, strict=False)], level)
