"""The end-of-session tables as aligned text rows: every checked metric, the notes under it, the trade-off."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pytest_llmperf.core.metrics import format_value
from pytest_llmperf.core.outcome import CheckOutcome, Status

HEADER = ("test", "metric", "baseline", "current", "delta %", "tolerance", "verdict")


def relative_to_root(text: str, root: Path | None) -> str:
    """``text`` with the paths under ``root`` (the rootdir) made relative to it: a report holds no machine's
    paths (``<rootdir>/baselines/x.json`` -> ``baselines/x.json``)."""
    return text if root is None else text.replace(f"{root}{os.sep}", "")


def table_rows(outcomes: Sequence[CheckOutcome]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for outcome in outcomes:
        for comparison in outcome.comparisons:
            delta = comparison.delta_pct
            rewriting = outcome.status in (Status.UPDATED, Status.NOT_WRITTEN)
            verdict = outcome.status.value if rewriting else comparison.verdict.value
            if outcome.status is Status.NOT_JUDGED and outcome.disturbed and verdict in ("regressed", "not judged"):
                verdict = "not judged (busy)"  # a regression (or an unsure verdict) measured on a busy machine
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


_MEMORY = ("engine_mem_gib", "rss_peak_gib", "mem_max_gib")


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
        if outcome.status in (Status.NEW, Status.NOT_COMPARABLE, Status.NOT_WRITTEN, Status.NOT_JUDGED) or (
            outcome.improvements and outcome.message and outcome.status is not Status.UPDATED
        ):
            message = outcome.message
            notes.append(message if message.startswith(f"{outcome.test}: ") else f"{outcome.test}: {message}")
        for warning in outcome.warnings:
            tests_by_warning.setdefault(warning, []).append(outcome.test)
    for warning, tests in tests_by_warning.items():
        notes.append(f"warning: {warning} ({len(tests)} test{'s' if len(tests) > 1 else ''}: {', '.join(tests)})")
    return notes


def overall_verdict(outcome: CheckOutcome) -> str:
    """One word for a whole test: its status, or for a passing test ok / improved / not judged."""
    if outcome.status is not Status.PASSED:
        return str(outcome.status.value)
    if outcome.unjudged:
        return "not judged"
    return "improved" if outcome.improvements else "ok"


_ORDER = ("regressed", "not written", "not comparable", "new", "not judged", "improved", "updated", "ok")


def headline(outcomes: Sequence[CheckOutcome]) -> str:
    """``"2 regressed, 1 not comparable, 11 ok"``: how many tests got each verdict, the worst first."""
    counts: dict[str, int] = {}
    for outcome in outcomes:
        verdict = overall_verdict(outcome)
        counts[verdict] = counts.get(verdict, 0) + 1
    return ", ".join(f"{counts[verdict]} {verdict}" for verdict in _ORDER if verdict in counts)
