"""Memory, throughput and latency against a study's knob: one line per metric (unavailable values left out), the
study's objective first and thicker, error bars from each point's repetitions, the chosen knob value marked, and
every quantity's axis from 0."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from pytest_llmperf.reports.figures import (
    Series,
    figure,
    from_zero,
    knob_ticks,
    latency_scale,
    legend,
    mark_chosen,
    memory_scale,
    plot_series,
    versus,
)


def memory_vs_knob(axis: str, labels: Sequence[str], memory: Sequence[Series], chosen: int | None = None) -> Figure:
    """Memory metrics (``mem_max_gib``, ``mem_mean_gib``, ``rss_peak_gib``, a GiB objective...) at each knob
    value; ``chosen`` is the index of the chosen point (None: no choice)."""
    fig = figure(8.4, 4.0)
    ax = fig.add_subplot()
    factor, unit = memory_scale([v for series in memory for v in series.values])
    for series in memory:
        plot_series(ax, series, factor, chosen)
    knob_ticks(ax, labels, axis)
    ax.set_ylabel(f"memory ({unit})")
    ax.set_title(versus("Memory", axis))
    ax.grid(alpha=0.3)
    from_zero(ax)
    mark_chosen(ax, chosen)
    legend(ax, memory, chosen)
    return fig


def speed_vs_knob(axis: str, labels: Sequence[str], throughput: Sequence[Series], latency: Sequence[Series],
                  chosen: int | None = None) -> Figure:
    """Throughput (tok/s) and latency percentiles side by side at each knob value."""
    fig = figure(14.0, 4.6)
    left, right = fig.subplots(1, 2)
    for series in throughput:
        plot_series(left, series, 1.0, chosen)
    left.set_ylabel("throughput (tok/s)")
    left.set_title(versus("Throughput", axis))
    factor, unit = latency_scale([v for series in latency for v in series.values])
    for series in latency:
        plot_series(right, series, factor, chosen)
    right.set_ylabel(f"latency ({unit})")
    right.set_title(versus("Latency percentiles", axis))
    for ax, drawn in ((left, throughput), (right, latency)):
        knob_ticks(ax, labels, None)
        ax.grid(alpha=0.3)
        from_zero(ax)
        mark_chosen(ax, chosen if drawn else None)
        legend(ax, drawn, chosen)
    fig.supxlabel(axis)
    return fig
