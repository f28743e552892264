"""Distribution-free confidence intervals for the verdicts: nothing here assumes normal or equal-spread noise.

- ``median_interval``: the interval of one sample's median from its order statistics (the sign test's
  interval: the k-th smallest and k-th largest values, k from the binomial(n, 1/2) distribution). It decides
  when a measurement without a baseline is precise enough (``measure until sure`` while recording).
- ``shift_interval``: the Hodges-Lehmann estimate of how far ``current`` moved from ``baseline`` and its
  Moses interval (order statistics of the m x n pairwise differences, cut by the Mann-Whitney U distribution).
  On log values (``relative=True``) that is a ratio current/baseline; the verdict needs the whole interval
  beyond the tolerance.
- ``paired_interval``: the median of per-pair ratios b/a and its sign-test interval, for interleaved A/B runs
  where each pair shares the machine's state.
- ``mann_whitney_p``: the two-sided p-value of the Mann-Whitney U test (normal approximation with tie and
  continuity corrections), for asv's rule in ``benchmarks/noise.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

_NORMAL = statistics.NormalDist()


@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence interval (``low <= estimate <= high``)."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _binomial_rank(n: int, level: float) -> int | None:
    """The largest k such that [x_(k), x_(n+1-k)] covers the median with probability >= ``level`` (1-based),
    None when even [min, max] does not (n too small)."""
    alpha = 1 - level
    best = None
    cumulative = 0.0
    for k in range(0, n // 2 + 1):
        # P(X <= k - 1) for X ~ Binomial(n, 1/2): the interval [x_(k), ...] misses on this side.
        if k >= 1:
            cumulative += math.comb(n, k - 1) / 2**n
        if 2 * cumulative <= alpha and k >= 1:
            best = k
    return best


def median_interval(samples: Sequence[float], level: float = 0.95) -> Interval | None:
    """The sample median and its order-statistic interval; None when ``samples`` are too few for ``level``
    (at 95%, 6 samples are the fewest)."""
    values = sorted(samples)
    rank = _binomial_rank(len(values), level)
    if rank is None:
        return None
    return Interval(statistics.median(values), values[rank - 1], values[len(values) - rank])


def _u_critical(m: int, n: int, level: float) -> int:
    """How many pairwise differences to cut from each end for a two-sided ``level`` Moses interval (normal
    approximation to the U distribution, which is close from m = n = 5 up)."""
    z = _NORMAL.inv_cdf(1 - (1 - level) / 2)
    return max(math.floor(m * n / 2 - z * math.sqrt(m * n * (m + n + 1) / 12)), 0)


def shift_interval(
    baseline: Sequence[float], current: Sequence[float], level: float = 0.95, *, relative: bool = True
) -> Interval | None:
    """How ``current`` differs from ``baseline``: a ratio (``relative``; every value must be > 0) or a difference,
    as Hodges-Lehmann estimate and Moses interval. None when either side has fewer than 2 values, or when
    ``relative`` and a value is not positive."""
    if len(baseline) < 2 or len(current) < 2:
        return None
    if relative:
        if min(baseline) <= 0 or min(current) <= 0:
            return None
        a, b = [math.log(x) for x in baseline], [math.log(x) for x in current]
    else:
        a, b = list(baseline), list(current)
    differences = sorted(y - x for y in b for x in a)
    cut = _u_critical(len(a), len(b), level)
    if cut >= len(differences) // 2:
        cut = max(len(differences) // 2 - 1, 0)
    low, high, estimate = differences[cut], differences[-cut - 1], statistics.median(differences)
    if relative:
        return Interval(math.exp(estimate), math.exp(low), math.exp(high))
    return Interval(estimate, low, high)


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval | None:
    """The median of the ratios b_i / a_i of measurements taken side by side, and its sign-test interval;
    None when the pairs are too few for ``level`` or a value is not positive."""
    if len(a) != len(b) or not a or min(a) <= 0 or min(b) <= 0:
        return None
    return median_interval([y / x for x, y in zip(a, b, strict=False)], level)


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test of ``a`` against ``b`` (normal approximation)."""
    m, n = len(a), len(b)
    if m == 0 or n == 0:
        return 1.0
    pooled = sorted([(value, 0) for value in a] + [(value, 1) for value in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        size = j - i + 1
        ties += size**3 - size
        i = j + 1
    rank_sum_a = sum(rank for rank, (_, side) in zip(ranks, pooled, strict=False) if side == 0)
    u = rank_sum_a - m * (m + 1) / 2
    total = m + n
    variance = m * n / 12 * ((total + 1) - ties / (total * (total - 1))) if total > 1 else 0.0
    if variance <= 0:
        return 1.0
    z = (abs(u - m * n / 2) - 0.5) / math.sqrt(variance)
    return min(1.0, 2 * (1 - _NORMAL.cdf(max(z, 0.0))))
