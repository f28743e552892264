"""Verdicts: each measured metric against its baseline, direction-aware, within its tolerance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from pytest_llmperf.baseline import Baseline, MetricRecord
from pytest_llmperf.metrics import metric_spec
from pytest_llmperf.tolerance import Tolerance, ToleranceTable


class Verdict(str, Enum):
    OK = "ok"
    REGRESSED = "regressed"
    IMPROVED = "improved"
    NEW = "new"
    NOT_COMPARABLE = "not comparable"
    UNAVAILABLE = "unavailable"


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
        if self.baseline is None or self.current is None or self.baseline == 0:
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


def format_value(value: float | None) -> str:
    """Four significant digits; one decimal from 100 up; scientific for tiny and huge values."""
    if value is None:
        return "-"
    if value != 0 and not 0.01 <= abs(value) < 1e6:
        return f"{value:.3e}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"


def judge(name: str, baseline: MetricRecord | None, current: float | None, tolerance: Tolerance) -> MetricComparison:
    """The verdict of one metric: only a change in the bad direction beyond tolerance is a regression."""
    if current is None:
        return MetricComparison(name, baseline.value if baseline else None, None, tolerance, Verdict.UNAVAILABLE)
    if baseline is None:
        return MetricComparison(name, None, current, tolerance, Verdict.NEW)
    worse_by = current - baseline.value if metric_spec(name).direction == "lower" else baseline.value - current
    allowed = tolerance.allowed(baseline.value)
    if worse_by > allowed:
        verdict = Verdict.REGRESSED
    elif -worse_by > allowed:
        verdict = Verdict.IMPROVED
    else:
        verdict = Verdict.OK
    return MetricComparison(name, baseline.value, current, tolerance, verdict)


def compare(
    current: Mapping[str, float | None], baseline: Baseline | None, tolerances: ToleranceTable
) -> list[MetricComparison]:
    """Compare every metric in ``current`` with ``baseline`` (None: all new)."""
    stored = baseline.metrics if baseline is not None else {}
    return [
        judge(name, stored.get(name), value, tolerances.for_metric(name)) for name, value in sorted(current.items())
    ]
