"""The JSON report (``--llmperf-report``), the form outcomes travel in from xdist workers, and reading it back."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.core.intervals import Interval
from pytest_llmperf.core.outcome import CheckOutcome, Status
from pytest_llmperf.core.session import LlmperfSession
from pytest_llmperf.core.session_studies import StudyResult
from pytest_llmperf.core.tolerance import Tolerance
from pytest_llmperf.core.verdict import MetricComparison, Verdict
from pytest_llmperf.measure.scaling import ScalingResult
from pytest_llmperf.reports.table import relative_to_root

REPORT_SCHEMA = 1


def outcome_to_json(outcome: CheckOutcome) -> dict[str, Any]:
    """Every metric the test measured: the gated ones with their verdicts, the others marked ``"gated": false``
    (never failing), each with its samples; the fingerprint and the workload behind them."""
    gated = {c.metric for c in outcome.comparisons}
    metrics = [
        {
            "metric": c.metric,
            "gated": True,
            "baseline": c.baseline,
            "current": _finite_or_none(c.current),
            "delta_pct": _finite_or_none(c.delta_pct),
            "tolerance": {"kind": c.tolerance.kind, "amount": c.tolerance.amount, "text": c.tolerance.text},
            "verdict": c.verdict.value,
            "note": c.note,
            "samples": outcome.all_samples.get(c.metric, []),
            "interval": None if c.interval is None else
            {"estimate": c.interval.estimate, "low": c.interval.low, "high": c.interval.high},
            "sure": c.sure,
            **({"stderr": outcome.stderr[c.metric]} if c.metric in outcome.stderr else {}),
        }
        for c in outcome.comparisons
    ]
    metrics += [
        {"metric": name, "gated": False, "current": _finite_or_none(value), "verdict": "not gated",
         "samples": outcome.all_samples.get(name, []),
         **({"stderr": outcome.stderr[name]} if name in outcome.stderr else {})}
        for name, value in sorted(outcome.measured.items())
        if name not in gated
    ]
    return {
        "test": outcome.test,
        "baseline_path": str(outcome.path),
        "status": outcome.status.value,
        "message": outcome.message,
        "changes": outcome.changes,
        "warnings": outcome.warnings,
        "notes": outcome.notes,
        "metrics": metrics,
        "fingerprint": outcome.fingerprint,
        "workload": outcome.workload,
        "quality": outcome.quality,
        "baseline_quality": outcome.baseline_quality,
        "disturbed": outcome.disturbed,
        **({"study": outcome.study} if outcome.study else {}),
    }


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a non-finite value (verdict "invalid", its note says what it was) is null."""
    return value if value is not None and math.isfinite(value) else None


def outcome_from_json(data: dict[str, Any]) -> CheckOutcome:
    gated = [entry for entry in data["metrics"] if entry.get("gated", True)]
    comparisons = [
        MetricComparison(
            entry["metric"],
            entry["baseline"],
            entry["current"],
            Tolerance(entry["tolerance"]["kind"], entry["tolerance"]["amount"], entry["tolerance"]["text"]),
            Verdict(entry["verdict"]),
            entry.get("note", ""),
            Interval(**entry["interval"]) if entry.get("interval") else None,
            bool(entry.get("sure", True)),
        )
        for entry in gated
    ]
    outcome = CheckOutcome(
        data["test"],
        Path(data["baseline_path"]),
        Status(data["status"]),
        comparisons,
        list(data["changes"]),
        list(data["warnings"]),
        data["message"],
        list(data.get("notes", [])),
    )
    outcome.measured = {entry["metric"]: entry["current"] for entry in data["metrics"]}
    outcome.all_samples = {entry["metric"]: list(entry.get("samples", [])) for entry in data["metrics"]}
    outcome.gated = [entry["metric"] for entry in gated]
    outcome.fingerprint, outcome.workload = dict(data.get("fingerprint", {})), dict(data.get("workload", {}))
    outcome.quality, outcome.baseline_quality = dict(data.get("quality") or {}), data.get("baseline_quality")
    outcome.disturbed = data.get("disturbed")
    outcome.stderr = {entry["metric"]: entry["stderr"] for entry in data["metrics"] if entry.get("stderr") is not None}
    outcome.study = data.get("study")
    return outcome


def render_json(
    outcomes: Sequence[CheckOutcome], scaling: Sequence[ScalingResult] = (), root: Path | None = None,
    studies: Sequence[StudyResult] = (),
) -> str:
    """The report document; baseline paths relative to ``root`` (the rootdir), so it holds no machine's paths."""
    tests = []
    for outcome in sorted(outcomes, key=lambda o: o.test):
        entry = outcome_to_json(outcome)
        for key in ("baseline_path", "message"):
            entry[key] = relative_to_root(entry[key], root)
        entry["notes"] = [relative_to_root(note, root) for note in entry["notes"]]
        tests.append(entry)
    document: dict[str, Any] = {"schema": REPORT_SCHEMA, "tests": tests}
    if scaling:
        document["scaling"] = [result.to_json() for result in sorted(scaling, key=lambda r: r.test)]
    if studies:
        document["studies"] = [study.to_json() for study in studies]
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


#: The run of report entries written before reports named their run.
UNRECORDED_RUN = "not recorded"
#: The entries of a report, each with the key that names it.
_ENTRIES = {"tests": "test", "scaling": "test", "studies": "study"}


def stamp_run(document: dict[str, Any], run: str, partial: Sequence[str], finished: str) -> dict[str, Any]:
    """``document`` (``render_json``'s, parsed) with every entry marked ``"run": run`` and ``"runs"``: what each
    run was (``partial``: why it covered only part of the suite; empty for the whole suite) and how many of the
    report's tests it wrote."""
    for key in _ENTRIES:
        for entry in document.get(key, []):
            entry["run"] = run
    document["runs"] = {run: {"finished": finished, "partial": list(partial)}}
    return _count_runs(document)


def merge_reports(earlier: Mapping[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """A partial run's report (``current``, stamped) merged into the report there before: the earlier report's
    tests, scaling tables and studies that this run did not measure again are kept, each still naming the run
    that wrote it; runs none of whose entries are left are dropped."""
    merged = dict(current)
    runs: dict[str, Any] = {name: dict(info) for name, info in (earlier.get("runs") or {}).items()}
    for key, name in _ENTRIES.items():
        fresh = {entry.get(name) for entry in current.get(key, [])}
        kept = [{**entry, "run": entry.get("run", UNRECORDED_RUN)} for entry in earlier.get(key) or []
                if isinstance(entry, dict) and entry.get(name) not in fresh]
        if any(entry["run"] == UNRECORDED_RUN for entry in kept):
            runs.setdefault(UNRECORDED_RUN, {"finished": None, "partial": None})
        entries = kept + list(current.get(key, []))
        if entries:
            merged[key] = sorted(entries, key=lambda entry: str(entry.get(name)))
    merged["runs"] = {**runs, **current["runs"]}
    return _count_runs(merged)


def _count_runs(document: dict[str, Any]) -> dict[str, Any]:
    """Each run's number of tests in the report; runs with no entry left are dropped."""
    present = {entry.get("run") for key in _ENTRIES for entry in document.get(key, [])}
    document["runs"] = {
        name: {**info, "tests": sum(1 for entry in document.get("tests", []) if entry.get("run") == name)}
        for name, info in document["runs"].items() if name in present or not document.get("tests")
    }
    return document


def load_report_values(path: Path) -> dict[tuple[str, str], float]:
    """``(test, metric) -> current value`` of a JSON report; raises LlmperfError naming a bad file."""
    return {key: value for key, (value, _) in load_report(path).items()}


def load_report(path: Path) -> dict[tuple[str, str], tuple[float, list[float]]]:
    """``(test, metric) -> (current value, samples)`` of a JSON report; raises LlmperfError naming a bad file."""
    from pytest_llmperf.errors import LlmperfError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != REPORT_SCHEMA:
            raise LlmperfError(f"{path}: report schema {data.get('schema')!r} is not {REPORT_SCHEMA}")
        return {
            (test["test"], metric["metric"]): (float(metric["current"]), [float(x) for x in metric.get("samples", [])])
            for test in data["tests"]
            for metric in test["metrics"]
            if metric["current"] is not None
        }
    except OSError as error:
        raise LlmperfError(f"cannot read report {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise LlmperfError(f"{path}: not a pytest-llmperf JSON report ({error})") from None


def worker_output(session: LlmperfSession, run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a pytest-xdist worker sends the controller (``config.workeroutput``): plain JSON; ``run``: which part
    of the suite the worker's collection selected (``reports/files.run_selection``)."""
    return {
        "llmperf_outcomes": [outcome_to_json(outcome) for outcome in session.outcomes],
        "llmperf_stale": [str(path) for path in session.stale],
        "llmperf_scaling": [result.to_json() for result in session.scaling],
        "llmperf_run": dict(run or {}),
    }


def merge_worker_output(session: LlmperfSession, output: Mapping[str, Any], run: dict[str, Any] | None = None) -> None:
    """Fold a finished worker's ``worker_output`` into the controller's session (and ``run``: every worker
    selects the same tests)."""
    session.outcomes.extend(outcome_from_json(entry) for entry in output.get("llmperf_outcomes", []))
    session.stale.update(Path(path) for path in output.get("llmperf_stale", []))
    session.scaling.extend(ScalingResult.from_json(entry) for entry in output.get("llmperf_scaling", []))
    if run is not None:
        run.update(output.get("llmperf_run", {}))
