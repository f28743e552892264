"""Reports of every checked metric: the end-of-session table, JSON and Markdown.

Outcomes also travel as JSON from pytest-xdist workers to the controller (``outcome_to_json`` and back).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.check import CheckOutcome, Status
from pytest_llmperf.compare import MetricComparison, Verdict, format_value
from pytest_llmperf.scaling import HEADER as SCALING_HEADER
from pytest_llmperf.scaling import ScalingResult, scaling_cells
from pytest_llmperf.tolerance import Tolerance

REPORT_SCHEMA = 1

HEADER = ("test", "metric", "baseline", "current", "delta %", "tolerance", "verdict")


def table_rows(outcomes: Sequence[CheckOutcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        for comparison in outcome.comparisons:
            delta = comparison.delta_pct
            rewriting = outcome.status in (Status.UPDATED, Status.NOT_WRITTEN)
            verdict = outcome.status.value if rewriting else comparison.verdict.value
            rows.append(
                (
                    outcome.test,
                    comparison.metric,
                    format_value(comparison.baseline),
                    format_value(comparison.current),
                    f"{delta:+.1f}" if delta is not None else "-",
                    str(comparison.tolerance),
                    verdict,
                )
            )
    return rows


def align(rows: Sequence[tuple[str, ...]], numeric: set[int]) -> list[str]:
    """Rows as aligned text lines: ``numeric`` columns right-aligned, the others left-aligned."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def render_table(outcomes: Sequence[CheckOutcome]) -> list[str]:
    """Aligned text lines of the table (header first), or no line when nothing was checked."""
    rows = table_rows(outcomes)
    if not rows:
        return []
    rule = tuple("-" * max(len(row[column]) for row in [HEADER, *rows]) for column in range(len(HEADER)))
    return align([HEADER, rule, *rows], numeric={2, 3, 4})


_SPEED = ("completion_tok_s", "total_tok_s")
_MEMORY = ("rss_peak_gib", "mem_max_gib")
_FIDELITY = ("kl_mean", "top1_agree")


def tradeoff_rows(outcomes: Sequence[CheckOutcome]) -> list[tuple[str, ...]]:
    """Speed vs memory vs accuracy vs fidelity, one row per test that checked a speed metric together with an
    accuracy or fidelity metric (the way the study compares quantisations); header first, or no row."""
    tables = []
    for outcome in sorted(outcomes, key=lambda o: o.test):
        values = {c.metric: c.current for c in outcome.comparisons}
        quality = [name for name in values if "." in name or name in _FIDELITY]
        if quality and any(name in values for name in _SPEED):
            tables.append((outcome.test, values, quality))
    if not tables:
        return []
    speed = [name for name in _SPEED if any(name in values for _, values, _ in tables)][:1]
    memory = [name for name in _MEMORY if any(name in values for _, values, _ in tables)]
    quality = sorted({name for _, _, names in tables for name in names}, key=lambda n: (n in _FIDELITY, n))
    columns = [*speed, *memory, *quality]
    rows: list[tuple[str, ...]] = [("test", *columns)]
    for test, values, _ in tables:
        rows.append((test, *(format_value(values.get(name)) for name in columns)))
    return rows


def render_notes(outcomes: Sequence[CheckOutcome]) -> list[str]:
    """Per-test notes under the table: fingerprint changes, new/incomparable baselines, warnings."""
    notes = []
    tests_by_warning: dict[str, list[str]] = {}
    for outcome in outcomes:
        for change in outcome.changes:
            notes.append(f"{outcome.test}: changed {change}")
        notes += [f"{outcome.test}: {note}" for note in outcome.notes]
        if outcome.status in (Status.NEW, Status.NOT_COMPARABLE, Status.NOT_WRITTEN) or (
            outcome.improvements and outcome.message and outcome.status is not Status.UPDATED
        ):
            notes.append(f"{outcome.test}: {outcome.message}")
        for warning in outcome.warnings:
            tests_by_warning.setdefault(warning, []).append(outcome.test)
    for warning, tests in tests_by_warning.items():
        notes.append(f"warning: {warning} ({len(tests)} test{'s' if len(tests) > 1 else ''}: {', '.join(tests)})")
    return notes


def outcome_to_json(outcome: CheckOutcome) -> dict[str, Any]:
    return {
        "test": outcome.test,
        "baseline_path": str(outcome.path),
        "status": outcome.status.value,
        "message": outcome.message,
        "changes": outcome.changes,
        "warnings": outcome.warnings,
        "notes": outcome.notes,
        "metrics": [
            {
                "metric": c.metric,
                "baseline": c.baseline,
                "current": _finite_or_none(c.current),
                "delta_pct": _finite_or_none(c.delta_pct),
                "tolerance": {"kind": c.tolerance.kind, "amount": c.tolerance.amount, "text": c.tolerance.text},
                "verdict": c.verdict.value,
            }
            for c in outcome.comparisons
        ],
    }


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN: a non-finite value (verdict "invalid", its note says what it was) is null."""
    return value if value is not None and math.isfinite(value) else None


def outcome_from_json(data: dict[str, Any]) -> CheckOutcome:
    comparisons = [
        MetricComparison(
            entry["metric"],
            entry["baseline"],
            entry["current"],
            Tolerance(entry["tolerance"]["kind"], entry["tolerance"]["amount"], entry["tolerance"]["text"]),
            Verdict(entry["verdict"]),
        )
        for entry in data["metrics"]
    ]
    return CheckOutcome(
        data["test"],
        Path(data["baseline_path"]),
        Status(data["status"]),
        comparisons,
        list(data["changes"]),
        list(data["warnings"]),
        data["message"],
        list(data.get("notes", [])),
    )


def render_json(outcomes: Sequence[CheckOutcome], scaling: Sequence[ScalingResult] = ()) -> str:
    tests = [outcome_to_json(outcome) for outcome in sorted(outcomes, key=lambda o: o.test)]
    document: dict[str, Any] = {"schema": REPORT_SCHEMA, "tests": tests}
    if scaling:
        document["scaling"] = [result.to_json() for result in sorted(scaling, key=lambda r: r.test)]
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def render_markdown(outcomes: Sequence[CheckOutcome], scaling: Sequence[ScalingResult] = ()) -> str:
    """A Markdown table (GitHub job summaries render it) plus the notes."""
    ordered = sorted(outcomes, key=lambda o: o.test)
    lines = ["## pytest-llmperf", ""]
    rows = table_rows(ordered)
    if rows:
        lines.append("| " + " | ".join(HEADER) + " |")
        lines.append("|" + "|".join("---" for _ in HEADER) + "|")
        for row in rows:
            cells = [cell.replace("|", "\\|") for cell in row]
            if cells[-1] == Verdict.REGRESSED.value:
                cells[-1] = "**regressed**"
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("No perf metric was checked.")
    notes = render_notes(ordered)
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    tradeoff = tradeoff_rows(ordered)
    if tradeoff:
        lines += ["", "### Trade-off (current values)", ""]
        lines.append("| " + " | ".join(tradeoff[0]) + " |")
        lines.append("|" + "---|" * len(tradeoff[0]))
        lines += ["| " + " | ".join(row) + " |" for row in tradeoff[1:]]
    for result in sorted(scaling, key=lambda r: r.test):
        lines += ["", f"### Scaling: {result.test}", ""]
        lines.append("| " + " | ".join(SCALING_HEADER) + " |")
        lines.append("|" + "---|" * len(SCALING_HEADER))
        lines += ["| " + " | ".join(cells) + " |" for cells in scaling_cells(result)]
    return "\n".join(lines) + "\n"


def report_paths(path: Path) -> tuple[Path, Path]:
    """The JSON and Markdown report files of ``--llmperf-report PATH``: a ``.md`` PATH is the Markdown (the
    JSON goes beside it as ``.json``), any other PATH is the JSON (the Markdown beside it as ``.md``)."""
    if path.suffix.lower() == ".md":
        return path.with_suffix(".json"), path
    return path, path.with_suffix(".md")


def check_report_path(path: Path, source: str) -> None:
    """Fail before anything runs when the reports could not be written at the end (``source``: the option)."""
    from pytest_llmperf.errors import LlmperfError

    for target in report_paths(path):
        if target.is_dir():
            raise LlmperfError(f"{source}: {target} is a directory; give a file path such as out/llmperf.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".llmperf-report-check-"):
            pass
    except OSError as error:
        raise LlmperfError(f"{source}: cannot write the report to {path} ({error.strerror or error})") from None


def write_reports(
    outcomes: Sequence[CheckOutcome], json_path: Path | None, scaling: Sequence[ScalingResult] = ()
) -> list[Path]:
    """Write the JSON report (and Markdown beside it, see ``report_paths``) and append Markdown to
    $GITHUB_STEP_SUMMARY."""
    written = []
    markdown = render_markdown(outcomes, scaling)
    if json_path is not None:
        json_file, markdown_file = report_paths(json_path)
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(render_json(outcomes, scaling), encoding="utf-8")
        markdown_file.write_text(markdown, encoding="utf-8")
        written += [json_file, markdown_file]
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as stream:
            stream.write(markdown)
        written.append(Path(step_summary))
    return written


def load_report_values(path: Path) -> dict[tuple[str, str], float]:
    """``(test, metric) -> current value`` of a JSON report; raises LlmperfError naming a bad file."""
    from pytest_llmperf.errors import LlmperfError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != REPORT_SCHEMA:
            raise LlmperfError(f"{path}: report schema {data.get('schema')!r} is not {REPORT_SCHEMA}")
        return {
            (test["test"], metric["metric"]): float(metric["current"])
            for test in data["tests"]
            for metric in test["metrics"]
            if metric["current"] is not None
        }
    except OSError as error:
        raise LlmperfError(f"cannot read report {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise LlmperfError(f"{path}: not a pytest-llmperf JSON report ({error})") from None


def compare_reports(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> list[str]:
    """A before/after table: per metric both values, after - before, the change in %, better or worse."""
    from pytest_llmperf.metrics import metric_spec

    header = ("test", "metric", "before", "after", "after-before", "change %", "")
    rows = []
    for key in sorted(set(before) | set(after)):
        test, metric = key
        old, new = before.get(key), after.get(key)
        if old is None or new is None:
            rows.append((test, metric, format_value(old), format_value(new), "-", "-", "only in one"))
            continue
        difference = new - old
        percent = f"{difference / abs(old) * 100:+.1f}" if old else "-"
        better = difference > 0 if metric_spec(metric).direction == "higher" else difference < 0
        mark = "" if difference == 0 else "better" if better else "worse"
        rows.append((test, metric, format_value(old), format_value(new), f"{difference:+.4g}", percent, mark))
    return align([header, *rows], numeric={2, 3, 4, 5})
