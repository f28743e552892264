"""The end-of-session summary as text lines: the table, the notes, the trade-off and scaling tables, stale files,
and why tests were skipped."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from pytest_llmperf.core.session import LlmperfSession
from pytest_llmperf.reports.ab import render_ab
from pytest_llmperf.reports.files import figures_dir, report_paths
from pytest_llmperf.reports.scaling import render_scaling
from pytest_llmperf.reports.study_report import render_study
from pytest_llmperf.reports.table import align, headline, relative_to_root, render_notes, render_table, tradeoff_rows


def summary_lines(session: LlmperfSession, skipped: Iterable[Any] = (), partial: Sequence[str] = ()) -> list[str]:
    """Every line of the ``llmperf`` section of the terminal summary (none when the run checked nothing and
    skipped nothing); ``skipped``: pytest's reports of the skipped tests (``perf_skips``); ``partial``: why the
    run covered only part of the suite (its report was merged into the one there)."""
    skips = skip_lines(perf_skips(skipped))
    if not (session.outcomes or session.stale or session.scaling or session.errors or skips):
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
    if skips:
        lines += ["", *skips]
    measured = session.outcomes or session.scaling or session.studies
    if partial and session.report is not None and measured:
        lines += ["", f"report {relative_to_root(str(session.report), session.root)}: this run covered part of the "
                  f"suite ({'; '.join(partial)}), so its tests were merged into the report there; the other tests' "
                  "entries are kept, each naming the run that wrote it"]
    return lines


#: Skip-reason groups shown; the rest are counted in one line.
MAX_SKIP_GROUPS = 6
#: Characters of a reason shown.
MAX_SKIP_REASON = 140
#: The markers that make a test a perf test in the skip summary.
PERF_MARKERS = {"perf", "gpu", "perf_study"}


def perf_skips(reports: Iterable[Any]) -> list[tuple[str, str]]:
    """``(test id, reason)`` of the skipped tests that carry a perf marker, from pytest's reports (duck-typed:
    a skip's ``longrepr`` is ``(path, line, "Skipped: reason")``)."""
    return [(report.nodeid, str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr))
            for report in reports if PERF_MARKERS & set(getattr(report, "keywords", None) or {})]


def skip_lines(skipped: Iterable[tuple[str, str]]) -> list[str]:
    """Why tests were skipped, without ``-rs``: one line per kind of reason with its count, most frequent first.
    A reason loses the test id it starts with and the details after its first ``;`` outside parentheses (the
    measured numbers); reasons that differ only in their numbers ("the machine ran 30% slower" and "... 45%
    slower") are one kind, shown by its first reason, marked "(numbers vary)"."""
    groups: dict[str, list[str]] = {}
    for test, reason in skipped:
        head = _reason_head(test, reason)
        groups.setdefault(re.sub(r"\d+(?:\.\d+)?", "#", head), []).append(head)
    if not groups:
        return []
    count = sum(len(heads) for heads in groups.values())
    kinds = sorted(groups.values(), key=len, reverse=True)
    lines = [f"skipped: {count} perf test{'' if count == 1 else 's'} (pytest -rs lists each with its reason)"]
    shown = len(kinds) if len(kinds) == MAX_SKIP_GROUPS + 1 else MAX_SKIP_GROUPS  # one more reason, not "1 other"
    for heads in kinds[:shown]:
        varies = " (numbers vary)" if len(set(heads)) > 1 else ""
        lines.append(f"  skipped {len(heads)}: {heads[0]}{varies}")
    rest = kinds[shown:]
    if rest:
        lines.append(f"  skipped {sum(len(heads) for heads in rest)}: {len(rest)} other reasons")
    return lines


def _reason_head(test: str, reason: str) -> str:
    text = reason.strip().removeprefix("Skipped: ").strip()
    text = text.removeprefix(f"{test}: ").removeprefix(f"{test} ")
    depth = 0
    for index, char in enumerate(text):  # the first "; " outside parentheses ends the reason; details follow
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth <= 0 and text.startswith("; ", index):
            text = text[:index]
            break
    text = text.strip()
    return text if len(text) <= MAX_SKIP_REASON else text[: MAX_SKIP_REASON - 3].rstrip() + "..."
