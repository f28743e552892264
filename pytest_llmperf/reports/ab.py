"""The A/B table of ``llmperf.ab``: both sides of every metric, B - A, the change in %, and B/A with its
interval, found in a test's measured metrics (``<A>.<m>``, ``<B>.<m>``, ``<B>_vs_<A>.<m>``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from pytest_llmperf.core.intervals import median_interval
from pytest_llmperf.core.metrics import format_value
from pytest_llmperf.core.verdict import LEVEL
from pytest_llmperf.reports.table import align

_RATIO = re.compile(r"^(?P<b>[A-Za-z][A-Za-z0-9_-]*)_vs_(?P<a>[A-Za-z][A-Za-z0-9_-]*)\.(?P<metric>.+)$")


def ab_cells(
    measured: Mapping[str, float | None], samples: Mapping[str, Sequence[float]]
) -> dict[tuple[str, str], list[tuple[str, ...]]]:
    """``(A, B) -> rows`` (metric, A, B, B - A, change %, B/A [interval]) for every A/B pair of labels in one
    test's metrics."""
    tables: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for name in sorted(measured):
        match = _RATIO.match(name)
        if match is None:
            continue
        a_label, b_label, metric = match["a"], match["b"], match["metric"]
        a, b = measured.get(f"{a_label}.{metric}"), measured.get(f"{b_label}.{metric}")
        interval = median_interval(list(samples.get(name, ())), LEVEL)
        ratio = f"{interval}" if interval is not None else format_value(measured[name])
        difference = f"{b - a:+.4g}" if a is not None and b is not None else "-"
        percent = f"{(b - a) / abs(a) * 100:+.1f}" if a and b is not None else "-"
        tables.setdefault((a_label, b_label), []).append(
            (metric, format_value(a), format_value(b), difference, percent, ratio)
        )
    return tables


def render_ab(test: str, measured: Mapping[str, float | None], samples: Mapping[str, Sequence[float]]
              ) -> list[str]:
    """Each A/B table of one test as aligned text lines (none when the test ran no ``llmperf.ab``)."""
    lines = []
    for (a_label, b_label), rows in ab_cells(measured, samples).items():
        header = ("metric", a_label, b_label, f"{b_label}-{a_label}", "change %", f"{b_label}/{a_label} [interval]")
        lines.append(f"{test} ({b_label} vs {a_label}, interleaved):")
        lines += ["  " + line for line in align([header, *rows], numeric={1, 2, 3, 4})]
    return lines
