"""The Markdown report: ready to paste into a pull request or a GitHub job summary.

It opens with a headline ("2 regressed, 1 not comparable, 11 ok") and the failure messages, then the table of
gated metrics, the notes, the trade-off and scaling tables, and per test every measured metric (folded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pytest_llmperf.core.metrics import format_value
from pytest_llmperf.core.outcome import CheckOutcome, Status
from pytest_llmperf.core.session_studies import StudyResult
from pytest_llmperf.core.verdict import Verdict
from pytest_llmperf.measure.scaling import ScalingResult
from pytest_llmperf.reports.ab import ab_cells
from pytest_llmperf.reports.scaling import scaling_cells, scaling_header
from pytest_llmperf.reports.study_report import study_markdown
from pytest_llmperf.reports.table import (
    HEADER,
    headline,
    relative_to_root,
    render_notes,
    table_rows,
    tradeoff_rows,
)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


_QUALITY = ("runqueue_wait", "others_cores", "steal_pct", "machine_speed")


def render_markdown(outcomes: Sequence[CheckOutcome], scaling: Sequence[ScalingResult] = (),
                    studies: Sequence[StudyResult] = (), root: Path | None = None) -> str:
    """The report; paths under ``root`` (the rootdir) relative to it, as in the JSON report."""
    ordered = sorted(outcomes, key=lambda o: o.test)
    lines = ["## pytest-llmperf", ""]
    if not ordered:
        lines.append("No perf metric was checked.")
    else:
        lines += [f"**{headline(ordered)}**", ""]
    failing = [o for o in ordered
               if o.status in (Status.REGRESSED, Status.NOT_WRITTEN, Status.NOT_JUDGED) or o.unjudged]
    for outcome in failing:
        message = outcome.message if outcome.status is not Status.PASSED else outcome.describe_unjudged()
        lines += ["```", message, "```", ""]
    rows = [list(row) for row in table_rows(ordered)]
    for row in rows:
        if row[-1] == Verdict.REGRESSED.value:
            row[-1] = "**regressed**"
    if rows:
        lines += _table(HEADER, rows)
    notes = render_notes(ordered)
    if notes:
        lines += ["", *[f"- {note}" for note in notes]]
    tradeoff = tradeoff_rows(ordered)
    if tradeoff:
        lines += ["", "### Trade-off (current values)", "", *_table(tradeoff[0], tradeoff[1:])]
    for study in studies:
        lines += ["", *study_markdown(study)]
    for result in sorted(scaling, key=lambda r: r.test):
        lines += ["", f"### Scaling: {result.test}", "", *_table(scaling_header(result), scaling_cells(result))]
    for outcome in ordered:
        for (a_label, b_label), ab_rows in ab_cells(outcome.measured, outcome.all_samples).items():
            header = ("metric", a_label, b_label, f"{b_label}-{a_label}", "change %", f"{b_label}/{a_label}")
            lines += ["", f"### A/B: {outcome.test} ({b_label} vs {a_label})", "", *_table(header, ab_rows)]
    quality = [(o.test, o.disturbed or "quiet", *(format_value(o.quality.get(name)) for name in _QUALITY))
               for o in ordered if o.quality]
    if quality:
        lines += ["", "### Measurement quality (medians over the repetitions)", "",
                  *_table(("test", "machine", *_QUALITY), quality)]
    measured = [o for o in ordered if o.measured]
    if measured:
        lines += ["", "### Every measured metric", ""]
    for outcome in measured:
        gated = set(outcome.gated)
        cells = [(name, format_value(value), "gated" if name in gated else "not gated")
                 for name, value in sorted(outcome.measured.items())]
        lines += [f"<details><summary>{outcome.test}</summary>", "", *_table(("metric", "value", ""), cells), "",
                  "</details>", ""]
    return relative_to_root("\n".join(lines), root).rstrip() + "\n"
