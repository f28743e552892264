"""The end-of-session summary as text lines: the table, the notes, the trade-off and scaling tables, stale files."""

from __future__ import annotations

from pytest_llmperf.core.session import LlmperfSession
from pytest_llmperf.reports.ab import render_ab
from pytest_llmperf.reports.files import figures_dir, report_paths
from pytest_llmperf.reports.scaling import render_scaling
from pytest_llmperf.reports.study_report import render_study
from pytest_llmperf.reports.table import align, headline, render_notes, render_table, tradeoff_rows


def summary_lines(session: LlmperfSession) -> list[str]:
    """Every line of the ``llmperf`` section of the terminal summary (none when the run checked nothing)."""
    if not (session.outcomes or session.stale or session.scaling or session.errors):
        return []
    lines = [f"ERROR {problem}" for problem in session.errors]
    if session.outcomes:
        lines.append(headline(session.outcomes))
    lines += render_table(sorted(session.outcomes, key=lambda outcome: outcome.test))
    notes = render_notes(session.outcomes)
    if notes:
        lines += ["", *notes]
    tradeoff = tradeoff_rows(session.outcomes)
    if tradeoff:
        lines += ["", "trade-off (current values; accuracy and fidelity beside speed and memory):"]
        lines += ["  " + line for line in align(tradeoff, numeric=set(range(1, len(tradeoff[0]))))]
    ab = [line for outcome in sorted(session.outcomes, key=lambda o: o.test)
          for line in render_ab(outcome.test, outcome.measured, outcome.all_samples)]
    if ab:
        lines += ["", "A/B (measured interleaved; B/A is the median of the pair ratios):", *ab]
    if session.scaling:
        lines += ["", "scaling (speedup: tok/s (overall t/s for parallel sequences) over the lowest level's; "
                  "efficiency: speedup / N):"]
        for result in sorted(session.scaling, key=lambda r: r.test):
            lines += render_scaling(result)
    for study in session.studies:
        where = figures_dir(report_paths(session.report)[0]).parent if session.report is not None else None
        lines += ["", *render_study(study, where)]
        if session.report is None:
            lines.append("  figures: not drawn (give --llmperf-report PATH: the PNGs go beside the report)")
    if session.stale:
        lines += ["", f"stale baseline files (no collected test owns them): {len(session.stale)}"]
        lines += [f"  {path}" for path in sorted(session.stale)]
        if session.prune_stale:
            lines.append("deleted (--llmperf-prune-stale)")
        else:
            lines.append("delete them with --llmperf-prune-stale once their tests are really gone")
    return lines
