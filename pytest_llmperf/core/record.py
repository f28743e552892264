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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_llmperf.core.check import CheckOutcome, Measurement, Status, check_measurement
from pytest_llmperf.core.tolerance import ToleranceTable
from pytest_llmperf.errors import LlmperfError

#: A fresh measurement of one part: every metric (prefixed) and its samples.
Remeasured = tuple[Mapping[str, "float | None"], Mapping[str, list[float]]]


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
) -> CheckOutcome:
    """The verdict of a whole test; a regression is measured again (up to ``confirm`` times) before it stands.

    Only parts that can measure again and hold a regressed metric are re-measured: a machine that was busy for a
    few seconds slows one measurement, rarely two in a row, while a real slowdown slows both. ``edit`` may change
    the fingerprint in place (the ``pytest_llmperf_fingerprint`` hook).
    """
    tables = record.tolerance_tables(tolerances)

    def measurement() -> Measurement:
        built = record.measurement()
        if edit is not None:
            edit(built.fingerprint)
        return built

    outcome = check_measurement(measurement(), baseline_dir, tolerances, update=update, per_metric=tables)
    for _ in range(confirm):
        if outcome.status is not Status.REGRESSED:
            break
        regressed = {comparison.metric for comparison in outcome.regressions}
        again = [
            (index, part.remeasure)
            for index, part in enumerate(record.parts)
            if part.remeasure is not None and regressed & set(part.gated)
        ]
        if not again:
            break
        first = ", ".join(f"{c.metric} {c.delta_pct:+.1f}%" for c in outcome.regressions if c.delta_pct is not None)
        for index, remeasure in again:
            metrics, samples = remeasure()
            record.parts[index] = replace(record.parts[index], metrics=dict(metrics), samples=dict(samples))
        outcome = check_measurement(measurement(), baseline_dir, tolerances, update=False, per_metric=tables)
        verdict = "confirmed it" if outcome.status is Status.REGRESSED else "was within tolerance: noise"
        outcome.notes.append(f"first measurement regressed ({first}); a second measurement {verdict}")
    outcome.measured = record.metrics
    outcome.all_samples = {name: list(s) for part in record.parts for name, s in part.samples.items()}
    outcome.gated = record.gated
    return outcome
