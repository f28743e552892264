"""``python -m pytest_llmperf compare``: a before/after table of two JSON reports."""

from __future__ import annotations

from pytest_llmperf.core.metrics import format_value
from pytest_llmperf.reports.table import align


def compare_reports(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> list[str]:
    """A before/after table: per metric both values, after - before, the change in %, better or worse."""
    from pytest_llmperf.core.metrics import metric_spec

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


def ab_report(report: dict[tuple[str, str], tuple[float, list[float]]]) -> list[str]:
    """The A/B tables of one report (``reports/ab.py``), test by test."""
    from pytest_llmperf.reports.ab import render_ab

    lines: list[str] = []
    for test in sorted({test for test, _ in report}):
        measured = {metric: value for (name, metric), (value, _) in report.items() if name == test}
        samples = {metric: values for (name, metric), (_, values) in report.items() if name == test}
        lines += render_ab(test, measured, samples)
    return lines
