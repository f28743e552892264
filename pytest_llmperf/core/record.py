"""A test's record: every measuring call of one test adds a ``Part``; the record is judged once, when the test ends.

Like syrupy's snapshot assertion, the calls collect and one place judges: ``measure``, ``fidelity``, ``scaling``,
``lm_eval_scorer`` and ``check`` each return their result at once (for plain asserts) and add their metrics,
samples, stderr, fingerprint and workload here. At the end of the test every gated metric of every part gets its
verdict against the test's one baseline file, all regressions go into one failure message, and
``--update-baselines`` writes one file.

Two calls must not measure the same metric name: that is an error naming both, unless each gets a ``name=``,
which prefixes its metrics (``decode.completion_tok_s``, ``prefill.ttft_p50``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from pytest_llmperf.core.baseline import hardware_class
from pytest_llmperf.core.disturbance import (
    MAX_DISTURBED_SHARE,
    MAX_MACHINE_DRIFT,
    busy_reason,
    contended,
    disturbed_share,
    explained_slowdown,
    summary,
    tail_metric,
)
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.outcome import CheckOutcome, Measurement, Status, check_measurement
from pytest_llmperf.core.paired import Documents
from pytest_llmperf.core.tolerance import ToleranceTable
from pytest_llmperf.core.verdict import MetricComparison, Verdict, speed_power
from pytest_llmperf.errors import LlmperfError


class SpeedHistory(Protocol):
    """This machine's usual reference-loop speed (``measure/quality.SpeedHistory`` keeps it on disk)."""

    def usual(self, hardware: str | None) -> tuple[float, int] | None:
        """The usual speed and how many measurements it rests on; None while too few."""

    def remember(self, hardware: str | None, speed: float | None) -> None:
        """Add one undisturbed measurement's speed."""


#: A fresh measurement of one part: every metric (prefixed), its samples, the quality figures of each
#: repetition (``measure/quality.py``) and why measuring stopped (``PerfResult.stopped``).
Remeasured = tuple[Mapping[str, "float | None"], Mapping[str, list[float]], list[dict[str, "float | None"]], str]


def prefixed(name: str | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every key prefixed by ``name.`` (unchanged when ``name`` is None)."""
    if name is None:
        return dict(values)
    return {f"{name}.{key}": value for key, value in values.items()}


@dataclass
class Part:
    """What one measuring call added to its test's record (metric names already prefixed by ``name``)."""

    call: str
    metrics: dict[str, float | None]
    gated: tuple[str, ...]
    samples: dict[str, list[float]] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: This call's own tolerances (``measure(tolerances=...)``), for its metrics only.
    tolerances: Mapping[str, object] | None = None
    #: Data stored beside the metrics (the logit-fidelity reference).
    reference: Any = None
    name: str | None = None
    #: Measures the part again, to confirm a suspected regression (None: numbers given by the test).
    remeasure: Callable[[], Remeasured] | None = None
    #: The machine's state over each repetition (``measure/quality.py``); empty for numbers given by the test.
    quality: list[dict[str, float | None]] = field(default_factory=list)
    #: Why measuring stopped: "sure", "max_repetitions", "max_seconds" or "fixed" (``PerfResult.stopped``).
    stopped: str = "fixed"
    #: The part computes on this CPU (in-process llama.cpp without GPU layers): its samples carry the machine's
    #: speed, and verdicts compare them at the same speed (``core/verdict.py``).
    cpu_bound: bool = False
    #: Accuracy: the score of every document of each metric, and the paired test's significance for them.
    documents: dict[str, Documents] = field(default_factory=dict)
    significance: float | None = None
    #: Why a metric this part could not measure is unavailable (its value is None): the verdict's note.
    unavailable: dict[str, str] = field(default_factory=dict)

    def speeds(self) -> dict[str, list[float]]:
        """Each metric's machine speeds, one per sample, where samples and repetitions line up."""
        if not self.cpu_bound:
            return {}
        speeds = [figures.get("machine_speed") for figures in self.quality]
        if not speeds or any(speed is None for speed in speeds):
            return {}
        return {name: [float(s) for s in speeds if s is not None] for name, values in self.samples.items()
                if len(values) == len(speeds)}

    @property
    def label(self) -> str:
        return self.name or f"{self.call}()"


@dataclass
class TestRecord:
    """The parts of one test, in call order."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    test: str
    parts: list[Part] = field(default_factory=list)
    #: ``llmperf.scaling`` results, for the end-of-session tables (each list grows when measured again).
    scaling: list[list[Any]] = field(default_factory=list)

    def add(self, part: Part) -> None:
        """Add ``part``; two parts that measure one metric name are an error naming both calls."""
        unknown = sorted(set(part.gated) - set(part.metrics))
        if unknown:
            raise LlmperfError(f"{self.test}: {part.label} gates {unknown}, which it did not measure")
        for other in self.parts:
            shared = sorted(set(other.metrics) & set(part.metrics))
            if shared:
                shown = ", ".join(shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
                raise LlmperfError(
                    f"{self.test}: {other.label} and {part.label} both measured {shown}; give each call a "
                    "name= (e.g. name='decode' makes its metrics decode.<metric>)"
                )
            if other.label == part.label:
                raise LlmperfError(f"{self.test}: two calls are named {part.label!r}; give each its own name=")
        self.parts.append(part)

    @property
    def metrics(self) -> dict[str, float | None]:
        """Every measured metric, gated or not."""
        return {name: value for part in self.parts for name, value in part.metrics.items()}

    @property
    def gated(self) -> list[str]:
        return [name for part in self.parts for name in part.gated]

    def measurement(self) -> Measurement:
        """The gated metrics of all parts as one measurement of the test."""
        gated = set(self.gated)
        references = [part for part in self.parts if part.reference is not None]
        reference: Any = None
        if len(references) == 1 and references[0].name is None:
            reference = references[0].reference
        elif references:
            reference = {"by_name": {part.label: part.reference for part in references}}
        return Measurement(
            test=self.test,
            metrics={name: value for name, value in self.metrics.items() if name in gated},
            samples={name: list(s) for part in self.parts for name, s in part.samples.items() if name in gated},
            fingerprint=merged_fingerprint(self.parts),
            workload=merged_workload(self.parts),
            warnings=list(dict.fromkeys(warning for part in self.parts for warning in part.warnings)),
            stderr={name: e for part in self.parts for name, e in part.stderr.items() if name in gated},
            reference=reference,
            quality=[figures for part in self.parts for figures in part.quality],
            speeds={name: s for part in self.parts for name, s in part.speeds().items() if name in gated},
            documents={name: d for part in self.parts for name, d in part.documents.items() if name in gated},
            significance={name: part.significance for part in self.parts if part.significance is not None
                          for name in part.documents if name in gated},
            unavailable={name: why for part in self.parts for name, why in part.unavailable.items() if name in gated},
        )

    def tolerance_tables(self, base: ToleranceTable) -> dict[str, ToleranceTable]:
        """The tolerance table of each gated metric: ``base`` under its own call's tolerances."""
        tables: dict[str, ToleranceTable] = {}
        for part in self.parts:
            table = base.with_layer(f"{part.call}(tolerances=...)", part.tolerances) if part.tolerances else base
            tables.update(dict.fromkeys(part.gated, table))
        return tables


def merged_fingerprint(parts: list[Part]) -> dict[str, Any]:
    """One fingerprint for the test: the parts' fingerprints merged key by key. A part whose value differs from
    an earlier part's (another engine) keeps its whole fingerprint under ``parts.<label>``."""
    merged: dict[str, Any] = {}
    for part in parts:
        if not part.fingerprint:
            continue
        if _conflicts(merged, part.fingerprint):
            merged.setdefault("parts", {})[part.label] = part.fingerprint
        else:
            _merge_into(merged, part.fingerprint)
    return merged


def _conflicts(base: Mapping[str, Any], extra: Mapping[str, Any]) -> bool:
    for key, value in extra.items():
        if key not in base:
            continue
        if isinstance(base[key], Mapping) and isinstance(value, Mapping):
            if _conflicts(base[key], value):
                return True
        elif base[key] != value:
            return True
    return False


def _merge_into(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(base.get(key), dict) and isinstance(value, Mapping):
            _merge_into(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def merged_workload(parts: list[Part]) -> dict[str, Any]:
    """The workload of the one part that has one, as it is; with several, each under its part's label."""
    with_workload = [part for part in parts if part.workload]
    if len(with_workload) == 1:
        return dict(with_workload[0].workload)
    return {part.label: dict(part.workload) for part in with_workload}


def judge(
    record: TestRecord,
    baseline_dir: Path,
    tolerances: ToleranceTable,
    *,
    update: bool,
    confirm: int = 1,
    edit: Callable[[dict[str, Any]], None] | None = None,
    strict: bool = False,
    wait_until_quiet: Callable[[Mapping[str, float | None] | None], float] | None = None,
    speed_history: SpeedHistory | None = None,
) -> CheckOutcome:
    """The verdict of a whole test.

    A regressed or not-sure metric is measured again (up to ``confirm`` times) before it stands: a machine that
    was busy for a few seconds slows one measurement, rarely two in a row. When the suspect measurement was
    disturbed (``core/disturbance.py``, relative to the quality the baseline was recorded in), the re-measurement
    first waits for the machine to quieten (``wait_until_quiet``, bounded); if the measurement that remains is
    still disturbed the test is "not judged: machine busy", never a failure. ``--update-baselines`` judges the
    recording instead: disturbed or widely spread repetitions warn, and in ``strict`` mode nothing is written.
    ``edit`` may change the fingerprint in place (the ``pytest_llmperf_fingerprint`` hook). ``speed_history`` keeps
    this machine's usual reference-loop speed: a recording made while the machine ran slower than that is
    doubtful too, and every measurement that was not disturbed adds to it.
    """
    tables = record.tolerance_tables(tolerances)

    def measurement() -> Measurement:
        built = record.measurement()
        if edit is not None:
            edit(built.fingerprint)
        return built

    outcome = check_measurement(measurement(), baseline_dir, tolerances, update=update, per_metric=tables)
    hardware = hardware_class(outcome.fingerprint)
    if update:
        usual = speed_history.usual(hardware) if speed_history is not None else None
        _judge_recording(record, outcome, tables, strict, usual)
    reference = outcome.baseline_quality
    for _ in range(confirm if not update else 0):
        if outcome.status not in (Status.REGRESSED, Status.NOT_JUDGED):
            break
        again = [(index, part) for index, part in enumerate(record.parts)
                 if part.remeasure is not None and _suspects(outcome) & set(part.gated)]
        if not again:
            break
        first = _summary_of(outcome)
        busy = [part for _, part in again if disturbed_share(part.quality, reference) >= MAX_DISTURBED_SHARE]
        waited = wait_until_quiet(reference) if busy and wait_until_quiet is not None else 0.0
        for index, part in again:
            assert part.remeasure is not None
            metrics, samples, quality, stopped = part.remeasure()
            record.parts[index] = replace(part, metrics=dict(metrics), samples=dict(samples), quality=list(quality),
                                          stopped=stopped)
        outcome = check_measurement(measurement(), baseline_dir, tolerances, update=False, per_metric=tables)
        verdict = {Status.REGRESSED: "confirmed it", Status.NOT_JUDGED: "was not sure either"}.get(
            outcome.status, "was within tolerance: noise")
        pause = f" after waiting {waited:.1f} s for the machine to quieten" if busy else ""
        outcome.notes.append(f"first measurement {first}; a second measurement{pause} {verdict}")
    if not update:
        _judge_disturbance(record, outcome, reference)
    if speed_history is not None and outcome.disturbed is None and outcome.status is not Status.NOT_JUDGED:
        speed_history.remember(hardware, outcome.quality.get("machine_speed"))
    outcome.measured = record.metrics
    outcome.all_samples = {name: list(s) for part in record.parts for name, s in part.samples.items()}
    outcome.gated = record.gated
    outcome.stderr = {name: e for part in record.parts for name, e in part.stderr.items() if e is not None}
    return outcome


def _suspects(outcome: CheckOutcome) -> set[str]:
    return {c.metric for c in outcome.comparisons if c.verdict in (Verdict.REGRESSED, Verdict.NOT_JUDGED)}


def _summary_of(outcome: CheckOutcome) -> str:
    shown = [f"{c.metric} {c.delta_pct:+.1f}%" for c in outcome.comparisons
             if c.verdict in (Verdict.REGRESSED, Verdict.NOT_JUDGED) and c.delta_pct is not None]
    word = "regressed" if outcome.status is Status.REGRESSED else "was not sure"
    return f"{word} ({', '.join(shown)})" if shown else word


def _judge_disturbance(record: TestRecord, outcome: CheckOutcome, reference: Mapping[str, float | None] | None
                       ) -> None:
    """A busy machine excuses only what it can explain (``core/disturbance.explained_slowdown``): a regression or
    an unsure verdict of a speed metric on a disturbed measurement becomes "not judged: machine busy" when the
    disturbance slowed the machine (never when it only ran faster) and the change, with that slowdown given
    back, comes back within the tolerance. A busy machine excuses no memory or accuracy regression, nor one
    measured undisturbed. A pass measured on a busy machine says so (it holds: the numbers were within tolerance
    even so)."""
    suspects = _suspects(outcome)
    disturbed = [part for part in record.parts if disturbed_share(part.quality, reference) >= MAX_DISTURBED_SHARE]
    if not disturbed:
        return
    reason = busy_reason([figures for part in disturbed for figures in part.quality], reference)
    outcome.disturbed = reason
    by_metric = {name: part for part in disturbed for name in part.gated}
    comparisons = {c.metric: c for c in outcome.comparisons}
    unexplained: list[str] = []
    excused = set()
    for name in suspects & set(by_metric):
        if not speed_power(name):
            continue
        part = by_metric[name]
        figures = summary(part.quality)
        factor = (math.inf if tail_metric(name) and contended(figures, reference) else
                  explained_slowdown(figures, reference, machine_adjusted=comparisons[name].adjusted))
        if _within_once_given_back(comparisons[name], factor):
            excused.add(name)
        else:
            adjusted = "beyond the machine's speed, already adjusted for, " if comparisons[name].adjusted else ""
            unexplained.append(f"{name} ({adjusted}the disturbance explains at most {factor:.2f}x)")
    standing = [c for c in outcome.regressions if c.metric not in excused]
    if outcome.status in (Status.REGRESSED, Status.NOT_JUDGED) and excused and not standing:
        shown = "; ".join(c.describe() for c in outcome.comparisons if c.metric in suspects)
        outcome.status = Status.NOT_JUDGED
        outcome.message = f"{outcome.test}: not judged: {reason}; measured: {shown}"
    elif outcome.status is Status.REGRESSED and unexplained:
        outcome.notes.append(f"measured while the {reason}, which cannot explain {', '.join(unexplained)}: "
                             "a regression all the same")
    elif outcome.status is Status.PASSED:
        hiding = _faster_machine(disturbed, comparisons, reference)
        if hiding:
            # A faster machine could hide a slowdown: such a pass rests on the disturbance.
            outcome.status = Status.NOT_JUDGED
            outcome.message = (f"{outcome.test}: not judged: {reason}; {', '.join(hiding)} passed, but a machine "
                               "faster than at recording could hide a regression")
            return
        # Contention only slows an engine down: numbers within tolerance despite it are within tolerance. The pass
        # stands with its reason recorded (warning, report, JUnit property), never silently.
        outcome.alerts.append(f"measured while the {reason}: within tolerance even so")
        outcome.warnings.append(outcome.alerts[-1])


def _faster_machine(disturbed: list[Part], comparisons: Mapping[str, MetricComparison],
                    reference: Mapping[str, float | None] | None) -> list[str]:
    """Speed metrics of ``disturbed`` parts that were not machine-adjusted, measured while the machine ran more
    than ``MAX_MACHINE_DRIFT`` faster than when the baseline was recorded."""
    then = (reference or {}).get("machine_speed")
    hiding = []
    for part in disturbed:
        speed = summary(part.quality).get("machine_speed")
        if not then or speed is None or speed / then - 1 <= MAX_MACHINE_DRIFT:
            continue
        hiding += [name for name in part.gated if speed_power(name) and name in comparisons
                   and not comparisons[name].adjusted and comparisons[name].verdict is Verdict.OK]
    return hiding


def _within_once_given_back(comparison: MetricComparison, factor: float) -> bool:
    """Whether ``comparison``'s change comes back within its tolerance once the disturbance's slowdown
    ``factor`` is given back (its interval's near end, else the point change)."""
    lower_is_better = metric_spec(comparison.metric).direction == "lower"
    power = speed_power(comparison.metric) or 1
    undo = factor ** power  # throughput x factor, time / factor
    if comparison.interval is not None and comparison.tolerance.kind == "relative":
        near = comparison.interval.low if lower_is_better else comparison.interval.high
        bad = 1 + comparison.tolerance.amount if lower_is_better else 1 - comparison.tolerance.amount
        return near * undo <= bad if lower_is_better else near * undo >= bad
    if comparison.baseline is None or comparison.current is None:
        return True
    allowed = comparison.tolerance.allowed(comparison.baseline, None)
    current = comparison.current * undo
    return (current - comparison.baseline if lower_is_better else comparison.baseline - current) <= allowed


def _judge_recording(record: TestRecord, outcome: CheckOutcome, tables: Mapping[str, ToleranceTable],
                     strict: bool, usual_speed: tuple[float, int] | None = None) -> None:
    """Warn when a baseline is recorded from disturbed or widely spread repetitions, or while the machine ran
    slower than it usually does (every later run would then count as disturbed, "the machine ran faster");
    in strict mode refuse it."""
    from pytest_llmperf.core.metrics import format_value
    from pytest_llmperf.core.stopping import adjusted, precise

    problems = []
    for part in record.parts:
        if disturbed_share(part.quality) >= MAX_DISTURBED_SHARE:
            problems.append(f"{part.label} was measured while the {busy_reason(part.quality)}")
        speed = summary(part.quality).get("machine_speed") if part.quality else None
        if usual_speed is not None and speed is not None and speed < usual_speed[0] * (1 - MAX_MACHINE_DRIFT):
            usual, count = usual_speed
            problems.append(
                f"{part.label} was measured while the machine ran {(1 - speed / usual) * 100:.0f}% slower than it "
                f"usually does (reference loop {speed:.1f} against {usual:.1f} Msteps/s, the median of its last "
                f"{count} tests): later runs at its usual speed would all count as disturbed")
        if part.stopped not in ("max_repetitions", "max_seconds"):
            continue
        speeds = part.speeds()
        for name in part.gated:
            samples = part.samples.get(name) or []
            values = adjusted(name, samples, speeds.get(name, []))
            if len(samples) >= 2 and not precise(values, tables[name].for_metric(name)):
                low, high = min(samples), max(samples)
                spread = f" ({high / low:.1f}x)" if low > 0 else ""
                problems.append(
                    f"{name}: {len(samples)} repetitions ranged {format_value(low)}-{format_value(high)}{spread}, "
                    f"too widely for its median to be known to half its tolerance ({tables[name].for_metric(name)})"
                )
    if not problems:
        return
    text = "; ".join(problems)
    if strict:
        outcome.pending = None
        outcome.status = Status.NOT_JUDGED
        outcome.message = f"{outcome.test}: baseline not recorded ({outcome.path} is as it was): {text}"
    else:
        outcome.alerts.append(f"baseline recorded from doubtful repetitions: {text}; record it again on a quieter "
                              "machine")
        outcome.warnings.append(outcome.alerts[-1])
