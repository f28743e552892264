"""Verdicts: each measured metric against its baseline, direction-aware, within its tolerance."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from pytest_llmperf.core.baseline import Baseline, MetricRecord
from pytest_llmperf.core.intervals import Interval, fewest_for, moses_cut, shift_interval
from pytest_llmperf.core.metrics import format_value, invalid_value, metric_spec
from pytest_llmperf.core.paired import SIGNIFICANCE, Documents, PairedTest, paired_test

__all__ = ["LEVEL", "MetricComparison", "Verdict", "compare", "format_value", "judge"]
from pytest_llmperf.core.tolerance import Tolerance, ToleranceTable


class Verdict(str, Enum):
    OK = "ok"
    REGRESSED = "regressed"
    IMPROVED = "improved"
    NEW = "new"
    NOT_COMPARABLE = "not comparable"
    UNAVAILABLE = "unavailable"
    #: A current value that cannot be a measurement (NaN, infinite, a negative time): never judged, never stored.
    INVALID = "invalid"
    #: The median moved beyond tolerance but its confidence interval reaches back inside: more repetitions (or a
    #: quieter machine) would tell. Never a failure, never a pass.
    NOT_JUDGED = "not judged"


#: Two-sided level of the intervals the verdicts use (exact: ``core/intervals.py``): each bound is a one-sided
#: 95% bound. Chosen with
#: ``benchmarks/noise.py`` (docs/noise.md): it keeps false alarms under 1% at a 5% tolerance while a 10% slowdown
#: is caught in >= 95% of the comparisons it judges.
LEVEL = 0.90
#: Samples of an engine that computes on this CPU are compared at the same machine speed: only repetitions whose
#: reference-loop speed was within this share of the baseline's median count, each adjusted for the speed it ran
#: at (``benchmarks/noise.py``, docs/noise.md: the host's speed drifted 2.5x here).
SAME_MACHINE = 0.05
#: The fewest repetitions at the baseline's machine speed a verdict needs on each side.
FEWEST_MATCHED = 3


@dataclass(frozen=True)
class MetricComparison:
    """One metric of one test: baseline vs current and what that means."""

    metric: str
    baseline: float | None
    current: float | None
    tolerance: Tolerance
    verdict: Verdict
    note: str = ""
    #: current/baseline (relative tolerance) or current - baseline (absolute) with its interval, when both
    #: sides had per-repetition samples.
    interval: Interval | None = None
    #: False when the interval reaches across the tolerance: a longer measurement could still change the verdict.
    sure: bool = True
    #: The interval compares samples at the same machine speed, adjusted for it (``SAME_MACHINE``).
    adjusted: bool = False
    #: Accuracy judged document by document against the baseline's documents (``core/paired.py``).
    paired: PairedTest | None = None

    @property
    def delta_pct(self) -> float | None:
        # A percentage of (nearly) zero says nothing (a KL divergence of 1e-15 going to 1e-3).
        if self.baseline is None or self.current is None or abs(self.baseline) < 1e-9:
            return None
        return (self.current - self.baseline) / abs(self.baseline) * 100.0

    def describe(self) -> str:
        """``completion_tok_s: 512.3 -> 240.1 (-53.1%, tolerance 30%)``."""
        delta = self.delta_pct
        change = f"{delta:+.1f}%, " if delta is not None else ""
        if self.interval is not None:
            kind = "ratio" if self.tolerance.kind == "relative" else "difference"
            change += f"{'machine-adjusted ' if self.adjusted else ''}{kind} {self.interval}, "
        if self.paired is not None:
            change += f"{self.paired.describe()}, "
        return (
            f"{self.metric}: {format_value(self.baseline)} -> {format_value(self.current)} "
            f"({change}tolerance {self.tolerance})"
        )


def _worse_by(name: str, baseline: float, current: float) -> float:
    """How much worse ``current`` is than ``baseline`` (negative: better), in the metric's unit."""
    return current - baseline if metric_spec(name).direction == "lower" else baseline - current


def interval_of(
    name: str, baseline: Sequence[float], current: Sequence[float], tolerance: Tolerance, level: float = LEVEL
) -> tuple[Interval, float, float] | None:
    """The interval of the change from ``baseline`` to ``current`` samples in the tolerance's terms, with the
    bad-direction limit and the good-direction limit it is judged against (a ratio for a relative tolerance, a
    difference for an absolute one); None when the samples cannot give one."""
    if tolerance.kind == "stderr":
        return None
    relative = tolerance.kind == "relative"
    interval = shift_interval(baseline, current, level, relative=relative)
    if interval is None:
        return None
    lower_is_better = metric_spec(name).direction == "lower"
    centre = 1.0 if relative else 0.0
    amount = tolerance.amount
    bad, good = (centre + amount, centre - amount) if lower_is_better else (centre - amount, centre + amount)
    return interval, bad, good


def unexplained_by_drift(
    name: str, baseline: MetricRecord, current: Sequence[float], speeds: Sequence[float], tolerance: Tolerance
) -> MetricComparison | None:
    """A verdict for a metric measured while the machine ran at another speed than at recording, when the
    drift cannot explain the change: a regression (or improvement) whose interval stays wholly beyond the
    tolerance after each repetition is given back *all* the speed the machine lost (for a regression) or gained
    (for an improvement) against the baseline's median speed. A faster machine never excuses a slowdown, nor a
    slower one a speed-up. None: the drift could explain the change (not judged)."""
    power = speed_power(name)
    if power is None or not speeds or len(speeds) != len(current) or not baseline.speeds:
        return None
    reference = statistics.median(baseline.speeds)
    base = [value / (speed / reference) ** power for value, speed in zip(baseline.samples, baseline.speeds,
                                                                        strict=True)]
    drift = statistics.median(speeds) / reference - 1

    def given_back(worse: bool) -> list[float]:
        # A throughput (power 1) loses speed with the machine: give back a slower machine's loss, never a
        # faster machine's gain (for ``worse``); times the other way round.
        factors = [(max(1.0, reference / speed) if worse else min(1.0, reference / speed)) for speed in speeds]
        return [value * factor ** power for value, factor in zip(current, factors, strict=True)]

    lower_is_better = metric_spec(name).direction == "lower"
    for worse, verdict in ((True, Verdict.REGRESSED), (False, Verdict.IMPROVED)):
        judged = interval_of(name, base, given_back(worse), tolerance)
        if judged is None:
            return None
        interval, bad, good = judged
        limit, upward = (bad, lower_is_better) if worse else (good, not lower_is_better)
        if interval.low > limit if upward else interval.high < limit:
            word = "slower" if drift < 0 else "faster"
            note = (f"the machine ran {abs(drift) * 100:.0f}% {word} than when the baseline was recorded, which "
                    f"cannot explain this change: with every repetition given back the speed the machine "
                    f"{'lost' if worse else 'gained'}, the change {interval} is still beyond the tolerance")
            return MetricComparison(name, baseline.value, None, tolerance, verdict, note, interval, True, True)
    return None


def speed_power(name: str) -> int | None:
    """How a metric scales with the machine's speed: throughput with it (1), time against it (-1); None: not."""
    unit = metric_spec(name).unit
    return 1 if unit in ("tok/s", "req/s") else -1 if unit == "s" else None


def same_machine(
    name: str, baseline: MetricRecord, current: Sequence[float], speeds: Sequence[float]
) -> tuple[list[float], list[float], str] | None:
    """The samples of both sides taken within ``SAME_MACHINE`` of the baseline's median machine speed, each adjusted
    for the speed it ran at, and a note when too few are; None when the metric does not scale with the machine
    or the speeds are missing."""
    power = speed_power(name)
    if power is None or not baseline.speeds or len(baseline.speeds) != len(baseline.samples) or \
            not speeds or len(speeds) != len(current):
        return None
    reference = statistics.median(baseline.speeds)

    def matched(values: Sequence[float], machine: Sequence[float]) -> list[float]:
        return [value / (speed / reference) ** power for value, speed in zip(values, machine, strict=True)
                if abs(speed / reference - 1) <= SAME_MACHINE]

    base, now = matched(baseline.samples, baseline.speeds), matched(current, speeds)
    note = ""
    if len(base) < FEWEST_MATCHED or len(now) < FEWEST_MATCHED:
        drift = (statistics.median(speeds) / reference - 1) * 100
        note = (f"{name}: only {len(now)} of {len(current)} repetitions ran with the machine at the baseline's speed "
                f"(within {SAME_MACHINE:.0%}; it ran {abs(drift):.0f}% {'slower' if drift < 0 else 'faster'}): "
                "not comparable now")
    return base, now, note


def judge(
    name: str,
    baseline: MetricRecord | None,
    current: float | None,
    tolerance: Tolerance,
    current_samples: Sequence[float] = (),
    current_stderr: float | None = None,
    current_speeds: Sequence[float] = (),
    current_documents: Documents | None = None,
    significance: float = SIGNIFICANCE,
) -> MetricComparison:
    """The verdict of one metric: only a change in the bad direction beyond tolerance is a regression.

    Accuracy scored on the same documents as the baseline's is judged paired (``core/paired.py``): a change
    beyond tolerance counts only when the documents that moved make it significant at ``significance``.

    Noise rule: when both sides have per-repetition samples (at least 2 each), the change is the Hodges-Lehmann
    estimate of current/baseline (or current - baseline, for an absolute tolerance) with its exact Moses interval
    at ``LEVEL`` (``core/intervals.shift_interval``). A regression needs the whole interval beyond the tolerance,
    an improvement the same on the other side. When the interval reaches across the tolerance the verdict is not
    sure (``sure=False``): ok if the median is within tolerance, otherwise not judged; likewise when the samples
    are too few for an interval at ``LEVEL``. ``benchmarks/noise.py`` measures this rule's false alarms and
    detection beside asv's and a point rule. Without samples the median alone is compared.
    """
    if current is None:
        return MetricComparison(name, baseline.value if baseline else None, None, tolerance, Verdict.UNAVAILABLE)
    problem = invalid_value(name, current)
    if problem is not None:
        stored = baseline.value if baseline else None
        return MetricComparison(name, stored, current, tolerance, Verdict.INVALID, problem)
    if baseline is None:
        return MetricComparison(name, None, current, tolerance, Verdict.NEW)
    point = _point_verdict(name, baseline, current, tolerance, current_stderr)
    paired = _paired_verdict(name, baseline, current, tolerance, point, current_documents, significance)
    if paired is not None:
        return paired
    # Samples that do not match the stored value (a hand-edited baseline) say nothing about it.
    if not (baseline.samples and current_samples and math.isclose(statistics.median(baseline.samples),
                                                                    baseline.value)):
        return MetricComparison(name, baseline.value, current, tolerance, point)
    base, now = list(baseline.samples), list(current_samples)
    matched = same_machine(name, baseline, now, current_speeds) if tolerance.kind == "relative" else None
    if matched is not None:
        base, now, note = matched
        if note:
            beyond_drift = unexplained_by_drift(name, baseline, current_samples, current_speeds, tolerance)
            if beyond_drift is not None:
                return replace(beyond_drift, current=current)
            return MetricComparison(name, baseline.value, current, tolerance, Verdict.NOT_JUDGED, note, None, False)
    judged = interval_of(name, base, now, tolerance)
    if judged is None:
        return _too_few(name, baseline.value, current, tolerance, point, len(base), len(now))
    return _interval_verdict(name, baseline.value, current, tolerance, point, judged, adjusted=matched is not None)


def _point_verdict(
    name: str, baseline: MetricRecord, current: float, tolerance: Tolerance, current_stderr: float | None
) -> Verdict:
    """The median alone against the tolerance (widened by the combined standard error, for a stderr tolerance)."""
    worse_by = _worse_by(name, baseline.value, current)
    combined_stderr = (
        math.hypot(baseline.stderr, current_stderr)
        if baseline.stderr is not None and current_stderr is not None
        else None
    )
    allowed = tolerance.allowed(baseline.value, combined_stderr)
    return Verdict.OK if abs(worse_by) <= allowed else Verdict.REGRESSED if worse_by > 0 else Verdict.IMPROVED


def _paired_verdict(
    name: str, baseline: MetricRecord, current: float, tolerance: Tolerance, point: Verdict,
    current_documents: Documents | None, significance: float,
) -> MetricComparison | None:
    """The document-by-document verdict, when both sides scored the same documents; None otherwise."""
    # Documents that do not average to the stored value (a hand-edited baseline) say nothing about it.
    if baseline.documents is None or current_documents is None or not baseline.documents.scores or \
            not math.isclose(math.fsum(baseline.documents.scores) / len(baseline.documents.scores), baseline.value,
                             rel_tol=1e-9, abs_tol=1e-9):
        return None
    test = paired_test(baseline.documents, current_documents, metric_spec(name).direction == "higher")
    if test is None:
        return None
    return _paired(name, baseline.value, current, tolerance, point, test, significance)


def _too_few(
    name: str, stored: float, current: float, tolerance: Tolerance, point: Verdict, m: int, n: int
) -> MetricComparison:
    """Samples on both sides, but too few for an interval at ``LEVEL``: the median decides nothing beyond
    tolerance (not judged) and passes within it only as "not sure". One sample a side, a stderr tolerance or a
    ratio of non-positive values: the median's verdict, as without samples."""
    if m < 2 or n < 2 or tolerance.kind == "stderr" or moses_cut(m, n, LEVEL) is not None:
        return MetricComparison(name, stored, current, tolerance, point)
    why = (f"{m} and {n} repetitions cannot give a {LEVEL:.0%} interval of the change (the exact Mann-Whitney "
           f"interval needs {fewest_for(LEVEL)} a side)")
    if point is Verdict.OK:
        return MetricComparison(name, stored, current, tolerance, Verdict.OK, f"{name}: ok, not sure: {why}",
                                sure=False)
    return MetricComparison(name, stored, current, tolerance, Verdict.NOT_JUDGED,
                            f"{name} moved beyond tolerance, but {why}: not sure (measure more repetitions)",
                            sure=False)


def _interval_verdict(
    name: str, stored: float, current: float, tolerance: Tolerance, point: Verdict,
    judged: tuple[Interval, float, float], *, adjusted: bool,
) -> MetricComparison:
    """The verdict of the change's interval against the tolerance's bad and good limits."""
    interval, bad, good = judged
    lower_is_better = metric_spec(name).direction == "lower"

    def made(verdict: Verdict, note: str = "", sure: bool = True) -> MetricComparison:
        return MetricComparison(name, stored, current, tolerance, verdict, note, interval, sure, adjusted)

    def beyond(limit: float, upward: bool) -> bool:
        return interval.low > limit if upward else interval.high < limit

    if beyond(bad, lower_is_better):
        return made(Verdict.REGRESSED)
    if beyond(good, not lower_is_better):
        return made(Verdict.IMPROVED)
    if interval.high <= bad if lower_is_better else interval.low >= bad:
        return made(Verdict.OK)
    if interval.estimate > bad if lower_is_better else interval.estimate < bad:
        return made(Verdict.NOT_JUDGED, f"{name} moved beyond tolerance, but its interval {interval} reaches back "
                    "inside it: not sure (measure longer, or on a quieter machine)", sure=False)
    point_beyond = point is Verdict.REGRESSED
    return made(Verdict.OK, f"{name}: ok, not sure: " + (
        f"the median moved beyond tolerance, but the estimate {interval.estimate:.3g} of the change is within it "
        f"and its interval {interval} reaches beyond it" if point_beyond else
        f"its interval {interval} reaches beyond the tolerance") + " (measure longer to be sure)", sure=False)


def _paired(
    name: str, stored: float, current: float, tolerance: Tolerance, point: Verdict, test: PairedTest,
    significance: float,
) -> MetricComparison:
    """The paired verdict: beyond tolerance *and* significant; beyond tolerance alone is ok, not sure."""
    p_value = test.p_worse if point is Verdict.REGRESSED else test.p_better
    if point is Verdict.OK or p_value < significance:
        return MetricComparison(name, stored, current, tolerance, point, paired=test)
    note = (f"{name} moved beyond tolerance, but not significantly document by document (p={p_value:.2g} >= "
            f"{significance:g}): {test.describe()}")
    return MetricComparison(name, stored, current, tolerance, Verdict.OK, note, sure=False, paired=test)


def compare(
    current: Mapping[str, float | None],
    baseline: Baseline | None,
    tolerances: ToleranceTable,
    current_samples: Mapping[str, Sequence[float]] | None = None,
    current_stderr: Mapping[str, float | None] | None = None,
    per_metric: Mapping[str, ToleranceTable] | None = None,
    current_speeds: Mapping[str, Sequence[float]] | None = None,
    current_documents: Mapping[str, Documents] | None = None,
    significance: Mapping[str, float] | None = None,
) -> list[MetricComparison]:
    """Compare every metric in ``current`` with ``baseline`` (None: all new); ``per_metric`` overrides the
    tolerance table for some metrics (a call's own tolerances)."""
    stored = baseline.metrics if baseline is not None else {}
    samples = current_samples or {}
    stderr = current_stderr or {}
    tables = per_metric or {}
    return [
        judge(
            name,
            stored.get(name),
            value,
            tables.get(name, tolerances).for_metric(name),
            samples.get(name, ()),
            stderr.get(name),
            (current_speeds or {}).get(name, ()),
            (current_documents or {}).get(name),
            (significance or {}).get(name, SIGNIFICANCE),
        )
        for name, value in sorted(current.items())
    ]
