"""One test's check: measured metrics against its baseline file, or a rewrite of that file.

Plain Python (no pytest): the plugin turns the returned ``CheckOutcome`` into a pass, skip or failure.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pytest_llmperf import fingerprint as fingerprints
from pytest_llmperf.baseline import (
    Baseline,
    MetricRecord,
    baseline_path,
    hardware_class,
    load_baseline,
    record_baseline,
)
from pytest_llmperf.compare import MetricComparison, Verdict, compare
from pytest_llmperf.errors import BaselineError
from pytest_llmperf.tolerance import ToleranceTable


class Status(str, Enum):
    PASSED = "passed"
    REGRESSED = "regressed"
    NEW = "new"
    NOT_COMPARABLE = "not comparable"
    UPDATED = "updated"


@dataclass
class CheckOutcome:
    """What the check of one test found, and the message to show for it."""

    test: str
    path: Path
    status: Status
    comparisons: list[MetricComparison] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    message: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.verdict is Verdict.REGRESSED]

    @property
    def improvements(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.verdict is Verdict.IMPROVED]


def accept_command(test: str) -> str:
    return f"pytest -m perf --update-baselines {shlex.quote(test)}"


@dataclass(frozen=True)
class Measurement:
    """The numbers of one test, as handed to the check."""

    test: str
    metrics: Mapping[str, float | None]
    samples: Mapping[str, list[float]]
    fingerprint: dict[str, Any]
    workload: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    stderr: Mapping[str, float | None] = field(default_factory=dict)
    reference: Any = None


def check_measurement(
    measurement: Measurement, baseline_dir: Path, tolerances: ToleranceTable, *, update: bool
) -> CheckOutcome:
    """Compare ``measurement`` with its baseline file, or (``update``) rewrite that file with it."""
    path = baseline_path(baseline_dir, measurement.test)
    current_class = hardware_class(measurement.fingerprint)
    try:
        stored = load_baseline(path)
    except BaselineError:
        if not update:
            raise
        stored = None  # a broken file is what --update-baselines is there to replace
    baseline = stored.for_hardware(current_class) if stored is not None else None
    changes = fingerprints.diff(baseline.fingerprint, measurement.fingerprint) if baseline else []
    comparisons = compare(measurement.metrics, baseline, tolerances, measurement.samples, measurement.stderr)
    outcome = CheckOutcome(measurement.test, path, Status.PASSED, comparisons, changes, list(measurement.warnings))

    if update:
        measured = {
            name: MetricRecord(value, list(measurement.samples.get(name, [value])), measurement.stderr.get(name))
            for name, value in measurement.metrics.items()
            if value is not None
        }
        entry = Baseline(
            measurement.test, measured, measurement.fingerprint, measurement.workload, measurement.reference
        )
        written = record_baseline(path, entry)
        outcome.status = Status.UPDATED
        kept = len(written.entries) - 1
        outcome.message = f"baseline written: {path}" + (
            f" (entry for {current_class!r}; {kept} other hardware class(es) kept)" if kept else ""
        )
        return outcome

    if stored is None:
        outcome.status = Status.NEW
        outcome.message = (
            f"no baseline for {measurement.test} (expected {path}); record one with: {accept_command(measurement.test)}"
        )
        return outcome

    if baseline is None:
        outcome.status = Status.NOT_COMPARABLE
        outcome.comparisons = [
            MetricComparison(c.metric, None, c.current, c.tolerance, Verdict.NOT_COMPARABLE) for c in comparisons
        ]
        recorded = ", ".join(repr(name) for name in stored.hardware_classes)
        outcome.message = (
            f"baseline {path} holds numbers for hardware {recorded}; this machine is {current_class!r}: "
            f"not comparable. Add this machine's numbers beside them with: {accept_command(measurement.test)}"
        )
        return outcome

    if outcome.regressions:
        outcome.status = Status.REGRESSED
        lines = [f"performance regression in {measurement.test} (baseline {path}):"]
        lines += [f"  {c.describe()}" for c in outcome.regressions]
        if changes:
            lines.append("changed since the baseline was recorded:")
            lines += [f"  {change}" for change in changes]
        else:
            lines.append("nothing in the fingerprint changed since the baseline was recorded")
        lines.append(f"if the new numbers are expected, accept them with: {accept_command(measurement.test)}")
        outcome.message = "\n".join(lines)
    elif outcome.improvements:
        names = ", ".join(c.metric for c in outcome.improvements)
        outcome.message = (
            f"{measurement.test} improved beyond tolerance ({names}); "
            f"record the new numbers with: {accept_command(measurement.test)}"
        )
    return outcome
