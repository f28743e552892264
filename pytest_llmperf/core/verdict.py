"""Verdicts: each measured metric against its baseline, direction-aware, within its tolerance."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from pytest_llmperf.core.baseline import Baseline, MetricRecord
from pytest_llmperf.core.metrics import format_value, invalid_value, metric_spec

__all__ = ["MetricComparison", "Verdict", "compare", "format_value", "judge"]
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


@dataclass(frozen=True)
class MetricComparison:
    """One metric of one test: baseline vs current and what that means."""

    metric: str
    baseline: float | None
    current: float | None
    tolerance: Tolerance
    verdict: Verdict
    note: str = ""

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
        return (
            f"{self.metric}: {format_value(self.baseline)} -> {format_value(self.current)} "
            f"({change}tolerance {self.tolerance})"
        )


def _worse_by(name: str, baseline: float, current: float) -> float:
    """How much worse ``current`` is than ``baseline`` (negative: better), in the metric's unit."""
    return current - baseline if metric_spec(name).direction == "lower" else baseline - current


def _best(name: str, samples: Sequence[float]) -> float:
    return min(samples) if metric_spec(name).direction == "lower" else max(samples)


def judge(
    name: str,
    baseline: MetricRecord | None,
    current: float | None,
    tolerance: Tolerance,
    current_samples: Sequence[float] = (),
    current_stderr: float | None = None,
) -> MetricComparison:
    """The verdict of one metric: only a change in the bad direction beyond tolerance is a regression.

    Noise rule: when both sides have per-repetition samples, a change counts only if the median (the headline
    value) *and* the best repetition moved beyond tolerance in the same direction. Interference on a shared
    machine slows some repetitions, rarely every one, so the best repetition shrugs it off while a real
    slowdown moves it too. ``benchmarks/noise.py`` measures the false-alarm and detection rates of this rule.
    """
    if current is None:
        return MetricComparison(name, baseline.value if baseline else None, None, tolerance, Verdict.UNAVAILABLE)
    problem = invalid_value(name, current)
    if problem is not None:
        stored = baseline.value if baseline else None
        return MetricComparison(name, stored, current, tolerance, Verdict.INVALID, problem)
    if baseline is None:
        return MetricComparison(name, None, current, tolerance, Verdict.NEW)
    worse_by = _worse_by(name, baseline.value, current)
    combined_stderr = (
        math.hypot(baseline.stderr, current_stderr)
        if baseline.stderr is not None and current_stderr is not None
        else None
    )
    allowed = tolerance.allowed(baseline.value, combined_stderr)
    if abs(worse_by) <= allowed:
        return MetricComparison(name, baseline.value, current, tolerance, Verdict.OK)
    verdict = Verdict.REGRESSED if worse_by > 0 else Verdict.IMPROVED
    # Samples that do not match the stored value (a hand-edited baseline) say nothing about it.
    if baseline.samples and current_samples and math.isclose(statistics.median(baseline.samples), baseline.value):
        best_baseline = _best(name, baseline.samples)
        best_worse_by = _worse_by(name, best_baseline, _best(name, current_samples))
        if best_worse_by * worse_by <= 0 or abs(best_worse_by) <= tolerance.allowed(best_baseline):
            note = "the median moved beyond tolerance but the best repetition did not: within run-to-run noise"
            return MetricComparison(name, baseline.value, current, tolerance, Verdict.OK, note)
    return MetricComparison(name, baseline.value, current, tolerance, verdict)


def compare(
    current: Mapping[str, float | None],
    baseline: Baseline | None,
    tolerances: ToleranceTable,
    current_samples: Mapping[str, Sequence[float]] | None = None,
    current_stderr: Mapping[str, float | None] | None = None,
    per_metric: Mapping[str, ToleranceTable] | None = None,
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
        )
        for name, value in sorted(current.items())
    ]
