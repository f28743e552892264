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
from pytest_llmperf.baseline import Baseline, MetricRecord, baseline_path, load_baseline, write_baseline
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


def _hardware_class(fingerprint: Mapping[str, Any]) -> object:
    hardware = fingerprint.get("hardware")
    return hardware.get("class") if isinstance(hardware, dict) else None


def check_measurement(
    measurement: Measurement, baseline_dir: Path, tolerances: ToleranceTable, *, update: bool
) -> CheckOutcome:
    """Compare ``measurement`` with its baseline file, or (``update``) rewrite that file with it."""
    path = baseline_path(baseline_dir, measurement.test)
    try:
        baseline = load_baseline(path)
    except BaselineError:
        if not update:
            raise
        baseline = None  # a broken file is what --update-baselines is there to replace
    changes = fingerprints.diff(baseline.fingerprint, measurement.fingerprint) if baseline else []
    comparisons = compare(measurement.metrics, baseline, tolerances, measurement.samples)
    outcome = CheckOutcome(measurement.test, path, Status.PASSED, comparisons, changes, list(measurement.warnings))

    if update:
        measured = {
            name: MetricRecord(value, list(measurement.samples.get(name, [value])))
            for name, value in measurement.metrics.items()
            if value is not None
        }
        write_baseline(path, Baseline(measurement.test, measured, measurement.fingerprint, measurement.workload))
        outcome.status = Status.UPDATED
        outcome.message = f"baseline written: {path}"
        return outcome

    if baseline is None:
        outcome.status = Status.NEW
        outcome.message = (
            f"no baseline for {measurement.test} (expected {path}); record one with: {accept_command(measurement.test)}"
        )
        return outcome

    current_class, stored_class = _hardware_class(measurement.fingerprint), _hardware_class(baseline.fingerprint)
    if current_class != stored_class:
        outcome.status = Status.NOT_COMPARABLE
        outcome.comparisons = [
            MetricComparison(c.metric, c.baseline, c.current, c.tolerance, Verdict.NOT_COMPARABLE) for c in comparisons
        ]
        outcome.message = (
            f"baseline {path} was recorded on hardware {stored_class!r}, this machine is {current_class!r}: "
            f"not comparable; record a baseline here with: {accept_command(measurement.test)}"
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
