"""One test's check: measured metrics against its baseline file, or a rewrite of that file.

Plain Python (no pytest): the plugin turns the returned ``CheckOutcome`` into a pass, skip or failure.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from pytest_llmperf.core import fingerprint as fingerprints
from pytest_llmperf.core.baseline import (
    Baseline,
    BaselineFile,
    MetricRecord,
    baseline_path,
    hardware_class,
    load_baseline,
    record_baseline,
)
from pytest_llmperf.core.disturbance import summary
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.paired import Documents
from pytest_llmperf.core.tolerance import Tolerance, ToleranceTable
from pytest_llmperf.core.verdict import MetricComparison, Verdict, compare
from pytest_llmperf.errors import BaselineError


class Status(str, Enum):
    PASSED = "passed"
    REGRESSED = "regressed"
    NEW = "new"
    NOT_COMPARABLE = "not comparable"
    UPDATED = "updated"
    #: ``--update-baselines`` on a test that failed: its baseline file was left as it was.
    NOT_WRITTEN = "not written"
    #: No verdict could be reached: the machine stayed busy, or a metric's interval reached across its
    #: tolerance. Skipped, or an error in strict mode: never a pass.
    NOT_JUDGED = "not judged"


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
    #: ``--update-baselines``: the entry to write once the test has passed (``write_pending``).
    pending: Baseline | None = None
    #: Every metric the test measured, gated or not, with the samples behind them (for the reports).
    measured: dict[str, float | None] = field(default_factory=dict)
    all_samples: dict[str, list[float]] = field(default_factory=dict)
    gated: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    #: The machine's state while this test measured (medians of ``core/disturbance.py`` figures), the state
    #: its baseline was recorded in, and why the measurement counts as disturbed (None: it does not).
    quality: dict[str, float | None] = field(default_factory=dict)
    baseline_quality: dict[str, float | None] | None = None
    disturbed: str | None = None
    #: Warnings the test itself must raise (a baseline recorded from doubtful repetitions, a pass measured on a
    #: busy machine); also in ``warnings``, for the reports.
    alerts: list[str] = field(default_factory=list)
    #: Standard errors of the measured metrics that have one (accuracy), gated or not.
    stderr: dict[str, float | None] = field(default_factory=dict)
    #: The test is a point of a study (``core/session_studies.py``): its study id, rule, knob values and the
    #: study's size.
    study: dict[str, Any] | None = None

    @property
    def unjudged(self) -> list[MetricComparison]:
        """Gated metrics that got no verdict: new (not in the baseline), unavailable or invalid."""
        return [c for c in self.comparisons if c.verdict in _UNJUDGED]

    def describe_unjudged(self) -> str:
        """One line naming each gated metric that was not judged and why."""
        parts = []
        for comparison in self.unjudged:
            why = {
                Verdict.NEW: "is not in the baseline",
                Verdict.UNAVAILABLE: comparison.note or "could not be measured (remove it from the gate to gate "
                                                        "without it)",
                Verdict.INVALID: comparison.note,
                Verdict.NOT_JUDGED: comparison.note,
            }[comparison.verdict]
            shown = comparison.verdict not in (Verdict.INVALID, Verdict.NOT_JUDGED) and not (
                comparison.verdict is Verdict.UNAVAILABLE and comparison.note)
            parts.append(f"{comparison.metric} {why}" if shown else why)
        hint = f"; record the new metrics with: {accept_command(self.test)}" if any(
            c.verdict is Verdict.NEW for c in self.unjudged
        ) else ""
        return f"{self.test}: not judged: {'; '.join(parts)}{hint}"

    @property
    def not_comparable(self) -> list[MetricComparison]:
        """Metrics with no entry of this hardware class to be judged against (speed, host RSS)."""
        return [c for c in self.comparisons if c.verdict is Verdict.NOT_COMPARABLE]

    def describe_not_comparable(self) -> str:
        names = ", ".join(c.metric for c in self.not_comparable)
        return f"{self.test}: {names} not comparable: {self.not_comparable[0].note}"

    @property
    def regressions(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.verdict is Verdict.REGRESSED]

    @property
    def improvements(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.verdict is Verdict.IMPROVED]


_UNJUDGED = (Verdict.NEW, Verdict.UNAVAILABLE, Verdict.INVALID, Verdict.NOT_JUDGED)


def accept_command(test: str) -> str:
    return f"pytest -m perf --update-baselines {shlex.quote(test)}"


def portable_entry(stored: BaselineFile, fingerprint: Mapping[str, Any],
                   workload: Mapping[str, Any] | None = None) -> Baseline | None:
    """The entry of another hardware class that this machine's portable metrics are judged against: one recorded
    with the same backend, preferring the one recorded with this run's workload (an accuracy entry of another
    class recorded on 400 questions says nothing of a run on 200), then the one whose library versions and model
    match this run's (every other difference is listed as a change beside the verdicts); None when no entry has
    the same backend."""
    same_backend = [entry for entry in stored.entries if entry.fingerprint.get("backend") == fingerprint.get("backend")]

    def matches(entry: Baseline) -> tuple[bool, bool, bool]:
        return (workload is not None and entry.workload == workload,
                entry.fingerprint.get("versions") == fingerprint.get("versions"),
                entry.fingerprint.get("model") == fingerprint.get("model"))

    return max(same_backend, key=matches, default=None)


def tables_for(per_metric: Mapping[str, ToleranceTable] | None, tolerances: ToleranceTable, name: str) -> Tolerance:
    """The tolerance of ``name``: its call's own table, else the test's."""
    return (per_metric or {}).get(name, tolerances).for_metric(name)


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
    #: ``core/disturbance.py`` figures of every repetition behind the metrics.
    quality: list[dict[str, float | None]] = field(default_factory=list)
    #: The machine's speed during each sample of a metric measured on this CPU (``MetricRecord.speeds``).
    speeds: Mapping[str, list[float]] = field(default_factory=dict)
    #: Accuracy metrics: the score of every document (``core/paired.py``), and the paired test's significance.
    documents: Mapping[str, Documents] = field(default_factory=dict)
    significance: Mapping[str, float] = field(default_factory=dict)
    #: Why a gated metric measured as None is unavailable (valgrind missing, say): the verdict's note.
    unavailable: Mapping[str, str] = field(default_factory=dict)


def _with_reasons(comparisons: list[MetricComparison], reasons: Mapping[str, str]) -> list[MetricComparison]:
    """Unavailable metrics with the measuring call's reason as their note."""
    return [replace(c, note=f"{c.metric} unavailable: {reasons[c.metric]}")
            if c.verdict is Verdict.UNAVAILABLE and c.metric in reasons and not c.note else c for c in comparisons]


def check_measurement(
    measurement: Measurement,
    baseline_dir: Path,
    tolerances: ToleranceTable,
    *,
    update: bool,
    per_metric: Mapping[str, ToleranceTable] | None = None,
) -> CheckOutcome:
    """Compare ``measurement`` with its baseline file, or (``update``) prepare the rewrite of that file.

    With ``update`` nothing is written here: the entry waits in ``outcome.pending`` until the test has passed
    (``write_pending``), so a failing test never rewrites its baseline. What cannot be written (a file it would
    lose, a non-finite or impossible value) is refused by ``record_baseline``, naming the file.
    """
    path = baseline_path(baseline_dir, measurement.test)
    current_class = hardware_class(measurement.fingerprint)
    stored, baseline = _stored_entry(measurement.test, path, current_class, update)
    # No entry of this hardware class: the portable metrics are judged against another class's entry.
    portable = (portable_entry(stored, measurement.fingerprint, measurement.workload)
                if stored is not None and baseline is None else None)
    against = baseline or portable
    changes = fingerprints.diff(against.fingerprint, measurement.fingerprint) if against else []
    if against is not None:
        changes += [f"workload.{change}" for change in fingerprints.diff(against.workload, measurement.workload)]
    judged_now = {name: value for name, value in measurement.metrics.items()
                  if stored is None or baseline is not None or (portable is not None and metric_spec(name).portable)}
    comparisons = _with_reasons(compare(
        judged_now, against, tolerances, measurement.samples, measurement.stderr, per_metric,
        measurement.speeds, measurement.documents, measurement.significance,
    ), measurement.unavailable)
    if against is not None and not update:
        comparisons += _not_measured(measurement, against, tolerances, per_metric, portable_only=baseline is None)
    outcome = CheckOutcome(measurement.test, path, Status.PASSED, comparisons, changes, list(measurement.warnings))
    outcome.fingerprint, outcome.workload = measurement.fingerprint, measurement.workload
    outcome.quality = summary(measurement.quality) if measurement.quality else {}
    outcome.baseline_quality = baseline.quality if baseline is not None else None
    if update:
        _prepare_rewrite(outcome, measurement, baseline, current_class)
        return outcome
    if stored is None:
        outcome.status = Status.NEW
        outcome.message = (
            f"no baseline for {measurement.test} (expected {path}); record one with: {accept_command(measurement.test)}"
        )
        return outcome
    if baseline is None:
        _judge_on_other_hardware(outcome, measurement, stored, portable, judged_now, tolerances, per_metric)
        if outcome.status is Status.NOT_COMPARABLE:
            return outcome
    _conclude(outcome, measurement.test, changes)
    return outcome


def _stored_entry(
    test: str, path: Path, current_class: str | None, update: bool
) -> tuple[BaselineFile | None, Baseline | None]:
    """The test's baseline file and this hardware class's entry in it (None: none). A file or entry that does
    not validate is an error in a check, and this machine's to replace under ``update``."""
    try:
        stored = load_baseline(path)
    except BaselineError:
        if not update:
            raise
        stored = None
    if stored is not None and stored.test != test:
        raise BaselineError(
            f"{path} holds the baseline of test {stored.test!r}, not of {test!r}: two tests must not "
            "share a file; rename one of them, or move the file if the test was renamed"
        )
    try:
        return stored, stored.for_hardware(current_class) if stored is not None else None
    except BaselineError:
        if not update:
            raise
        return stored, None


def _not_measured(
    measurement: Measurement, against: Baseline, tolerances: ToleranceTable,
    per_metric: Mapping[str, ToleranceTable] | None, *, portable_only: bool,
) -> list[MetricComparison]:
    """A gated metric of the baseline that this run did not measure: unavailable, never a pass."""
    return [
        MetricComparison(name, record.value, None, tables_for(per_metric, tolerances, name), Verdict.UNAVAILABLE,
                         f"{name} is in the baseline but this run did not measure it (if it left the gate on "
                         f"purpose, re-record: {accept_command(measurement.test)})")
        for name, record in sorted(against.metrics.items())
        if name not in measurement.metrics and (not portable_only or metric_spec(name).portable)
    ]


def _prepare_rewrite(
    outcome: CheckOutcome, measurement: Measurement, baseline: Baseline | None, current_class: str | None
) -> None:
    """``--update-baselines``: the entry to write once the test passes, and an alert for every metric the
    rewrite drops from this class's entry."""
    measured = {
        name: MetricRecord(value, list(measurement.samples.get(name, [value])), measurement.stderr.get(name),
                           list(measurement.speeds.get(name, [])), measurement.documents.get(name))
        for name, value in measurement.metrics.items()
        if value is not None
    }
    outcome.pending = Baseline(
        measurement.test, measured, measurement.fingerprint, measurement.workload, measurement.reference,
        outcome.quality or None,
    )
    outcome.status = Status.UPDATED
    outcome.message = f"baseline to be written once the test passes: {outcome.path}"
    dropped = sorted(set(baseline.metrics) - set(measured)) if baseline is not None else []
    if dropped:
        outcome.alerts.append(
            f"{measurement.test}: {', '.join(dropped)} {'is' if len(dropped) == 1 else 'are'} in the baseline "
            f"entry for {current_class!r} but not measured (or unavailable) now: the rewrite drops "
            f"{'it' if len(dropped) == 1 else 'them'} from {outcome.path}"
        )
        outcome.warnings.append(outcome.alerts[-1])


def _judge_on_other_hardware(
    outcome: CheckOutcome, measurement: Measurement, stored: BaselineFile, portable: Baseline | None,
    judged_now: Mapping[str, float | None], tolerances: ToleranceTable,
    per_metric: Mapping[str, ToleranceTable] | None,
) -> None:
    """No entry of this hardware class: the portable metrics judged against ``portable`` (noted), every other
    metric not comparable; the whole test not comparable when nothing was judged."""
    current_class = hardware_class(measurement.fingerprint)
    recorded = ", ".join(repr(name) for name in stored.hardware_classes)
    not_comparable = (
        f"the baseline holds it for hardware {recorded}; this machine is {current_class!r}: not comparable "
        f"(record this class beside them with: {accept_command(measurement.test)})"
    )
    if portable is not None:
        note = f"judged against the entry recorded on {portable.hardware_class!r}: portable metric"
        outcome.comparisons = [replace(c, note=f"{note}; {c.note}" if c.note else note) for c in outcome.comparisons]
    outcome.comparisons += [
        MetricComparison(name, None, value, tables_for(per_metric, tolerances, name), Verdict.NOT_COMPARABLE,
                         not_comparable)
        for name, value in sorted(measurement.metrics.items()) if name not in judged_now
    ]
    outcome.comparisons.sort(key=lambda c: c.metric)
    if not any(c.verdict is not Verdict.NOT_COMPARABLE for c in outcome.comparisons):
        outcome.status = Status.NOT_COMPARABLE
        outcome.message = (
            f"baseline {outcome.path} holds numbers for hardware {recorded}; this machine is "
            f"{current_class!r}: not comparable. Add this machine's numbers beside them with: "
            f"{accept_command(measurement.test)}"
        )


def _conclude(outcome: CheckOutcome, test: str, changes: list[str]) -> None:
    """The test's status and message from its verdicts: regressed (with what changed), not judged, improved."""
    if outcome.regressions:
        outcome.status = Status.REGRESSED
        lines = [f"performance regression in {test} (baseline {outcome.path}):"]
        lines += [f"  {c.describe()}" for c in outcome.regressions]
        if changes:
            lines.append("changed since the baseline was recorded:")
            lines += [f"  {change}" for change in changes]
        else:
            lines.append("nothing in the fingerprint or the workload changed since the baseline was recorded")
        lines.append(f"if the new numbers are expected, accept them with: {accept_command(test)}")
        outcome.message = "\n".join(lines)
    elif any(c.verdict is Verdict.NOT_JUDGED for c in outcome.comparisons):
        outcome.status = Status.NOT_JUDGED
        outcome.message = outcome.describe_unjudged()
    elif outcome.improvements:
        names = ", ".join(c.metric for c in outcome.improvements)
        outcome.message = (
            f"{test} improved beyond tolerance ({names}); record the new numbers with: {accept_command(test)}"
        )


def write_pending(outcome: CheckOutcome, test_passed: bool) -> None:
    """Write the baseline entry an ``--update-baselines`` check prepared, if its test passed; else keep the
    file as it was and say so. A BaselineError names the file when it cannot be written."""
    entry, outcome.pending = outcome.pending, None
    if entry is None:
        return
    if not test_passed:
        outcome.status = Status.NOT_WRITTEN
        outcome.message = f"baseline not written, the test failed: {outcome.path} is as it was"
        return
    try:
        written = record_baseline(outcome.path, entry)
    except BaselineError:
        outcome.status = Status.NOT_WRITTEN
        raise
    kept = len(written.hardware_classes) - 1
    outcome.message = f"baseline written: {outcome.path}" + (
        f" (entry for {entry.hardware_class!r}; {kept} other hardware class(es) kept)" if kept else ""
    )


@dataclass(frozen=True)
class Consequence:
    """What a test's outcome does to the test: fail it, skip it, or warn (or nothing)."""

    fail: str | None = None
    skip: str | None = None
    warnings: tuple[str, ...] = ()


def consequence(outcome: CheckOutcome, strict: bool) -> Consequence:
    """A regression fails; a missing or not-comparable baseline, or gated metrics that got no verdict, fail in
    strict mode and otherwise skip (not comparable) or warn — never a silent pass; an improvement warns."""
    if outcome.status is Status.REGRESSED:
        return Consequence(fail=outcome.message)
    if outcome.status is Status.NOT_JUDGED:
        if strict:
            return Consequence(fail=f"[strict] {outcome.message} (not a pass: retry the job on a quieter machine)")
        return Consequence(skip=outcome.message)
    if outcome.status in (Status.NEW, Status.NOT_COMPARABLE) and strict:
        return Consequence(fail=f"[strict] {outcome.message}")
    if outcome.status is Status.NOT_COMPARABLE:
        return Consequence(skip=outcome.message)
    warnings = []
    if outcome.status is Status.PASSED and outcome.unjudged:
        if strict:
            return Consequence(fail=f"[strict] {outcome.describe_unjudged()}")
        warnings.append(outcome.describe_unjudged())
    if outcome.status is Status.PASSED and outcome.not_comparable:
        # Judged on its portable metrics; the speed entry for this machine is still missing.
        if strict:
            return Consequence(fail=f"[strict] {outcome.describe_not_comparable()}")
        warnings.append(outcome.describe_not_comparable())
    if outcome.status is Status.NEW or (outcome.improvements and outcome.status is Status.PASSED):
        warnings.append(outcome.message)
    return Consequence(warnings=(*warnings, *outcome.alerts))
