"""The end-of-session table of every checked metric."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_llmperf.check import CheckOutcome
from pytest_llmperf.compare import format_value

HEADER = ("test", "metric", "baseline", "current", "delta %", "tolerance", "verdict")


def table_rows(outcomes: Sequence[CheckOutcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        for comparison in outcome.comparisons:
            delta = comparison.delta_pct
            verdict = "updated" if outcome.status.value == "updated" else comparison.verdict.value
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


def render_table(outcomes: Sequence[CheckOutcome]) -> list[str]:
    """Aligned text lines of the table (header first), or no line when nothing was checked."""
    rows = table_rows(outcomes)
    if not rows:
        return []
    widths = [max(len(row[column]) for row in [HEADER, *rows]) for column in range(len(HEADER))]
    numeric = {2, 3, 4}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if column in numeric else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        return "  ".join(cells).rstrip()

    return [line(HEADER), line(tuple("-" * width for width in widths)), *map(line, rows)]


def render_notes(outcomes: Sequence[CheckOutcome]) -> list[str]:
    """Per-test notes under the table: fingerprint changes, new/incomparable baselines, warnings."""
    notes = []
    tests_by_warning: dict[str, list[str]] = {}
    for outcome in outcomes:
        for change in outcome.changes:
            notes.append(f"{outcome.test}: changed {change}")
        if outcome.status.value in ("new", "not comparable") or (outcome.improvements and outcome.message):
            notes.append(f"{outcome.test}: {outcome.message}")
        for warning in outcome.warnings:
            tests_by_warning.setdefault(warning, []).append(outcome.test)
    for warning, tests in tests_by_warning.items():
        notes.append(f"warning: {warning} ({len(tests)} test{'s' if len(tests) > 1 else ''}: {', '.join(tests)})")
    return notes
