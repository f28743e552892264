"""Memory, throughput and latency against a study's knob (one line per metric, unavailable values left out)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from pytest_llmperf.reports.figures import figure, knob_ticks, latency_scale, memory_scale, scaled, versus


def memory_vs_knob(axis: str, labels: Sequence[str], memory: Mapping[str, Sequence[float | None]]) -> Figure:
    """Peak and mean memory (``mem_max_gib``, ``mem_mean_gib``, ``rss_peak_gib``...) at each knob value."""
    fig = figure()
    ax = fig.add_subplot()
    factor, unit = memory_scale([v for values in memory.values() for v in values])
    for name, values in memory.items():
        ax.plot(range(len(labels)), scaled(values, factor), marker="o", label=name)
    knob_ticks(ax, labels, axis)
    ax.set_ylabel(f"memory ({unit})")
    # From zero: a 2% difference drawn on a zoomed axis looks like a cliff.
    top = max((v for values in memory.values() for v in scaled(values, factor) if math.isfinite(v)), default=0.0)
    ax.set_ylim(0, top * 1.15 if top > 0 else None)
    ax.set_title(versus("Memory", axis))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def speed_vs_knob(axis: str, labels: Sequence[str], throughput: Mapping[str, Sequence[float | None]],
                  latency: Mapping[str, Sequence[float | None]]) -> Figure:
    """Throughput (tok/s) and latency percentiles side by side at each knob value."""
    fig = figure(10.0, 4.0)
    left, right = fig.subplots(1, 2)
    for name, values in throughput.items():
        left.plot(range(len(labels)), scaled(values, 1.0), marker="o", label=name)
    left.set_ylabel("throughput (tok/s)")
    left.set_title(versus("Throughput", axis))
    factor, unit = latency_scale([v for values in latency.values() for v in values])
    for name, values in latency.items():
        right.plot(range(len(labels)), scaled(values, factor), marker="o", label=name)
    right.set_ylabel(f"latency ({unit})")
    right.set_title(versus("Latency percentiles", axis))
    for ax in (left, right):
        knob_ticks(ax, labels, None)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.supxlabel(axis)
    return fig
