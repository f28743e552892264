"""A study's rule against its knob: the objective it maximises or minimises (whatever metric that is) on top, one
panel below for each constraint with its bound drawn, the points the rule excluded crossed out and the chosen
point starred: the figure that shows why the operating point is the one chosen."""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.operating_point import Constraint
from pytest_llmperf.reports.figures import (
    Series,
    figure,
    from_zero,
    knob_ticks,
    legend,
    mark_chosen,
    plot_series,
    scaled,
    versus,
)
from pytest_llmperf.reports.figures.tradeoff import unit_scale

#: Units of quantities whose axis starts at 0 (a score or a divergence keeps matplotlib's range).
_FROM_ZERO = ("tok/s", "req/s", "s", "GiB")


def objective_vs_knob(axis: str, labels: Sequence[str], objective: Series, maximise: bool,
                      constraints: Sequence[tuple[Series, Constraint]] = (), chosen: int | None = None,
                      excluded: Sequence[bool] = ()) -> Figure:
    """The objective at each knob value, then each constraint's metric against its bound; ``excluded`` flags
    the points the rule excluded (any reason: a constraint, accuracy), crossed out on the objective's panel."""
    fig = figure(9.6, 3.6 + 2.4 * len(constraints))
    axes: list[Axes] = list(fig.subplots(1 + len(constraints), 1, sharex=True, squeeze=False)[:, 0])
    goal = "maximise" if maximise else "minimise"
    _panel(axes[0], objective, chosen, excluded)
    axes[0].set_title(versus(f"Objective: {goal} {objective.name}", axis))
    for ax, (series, constraint) in zip(axes[1:], constraints, strict=True):
        _panel(ax, series, chosen, [constraint.failure(value) is not None for value in series.values], constraint)
        ax.set_title(f"Constraint: {constraint.text}", fontsize=10)
    for ax, series in zip(axes, [objective, *(series for series, _ in constraints)], strict=True):
        knob_ticks(ax, labels, None)
        mark_chosen(ax, chosen)
        legend(ax, [series], chosen)
    axes[-1].set_xlabel(axis)
    return fig


def _panel(ax: Axes, series: Series, chosen: int | None, crossed: Sequence[bool],
           constraint: Constraint | None = None) -> None:
    """One metric's line with its error bars, the chosen star, the crossed-out points and the constraint's
    bound (a dotted red line); its axis label."""
    factor, unit = unit_scale(series.name, series.values)
    plot_series(ax, series, factor, chosen)
    shown = scaled(series.values, factor)
    out = [index for index, flag in enumerate(crossed) if flag]
    if out:
        ax.scatter(out, [shown[index] for index in out], marker="x", s=110, color="black", zorder=5,
                   label="excluded by the rule" if constraint is None else "breaks the constraint")
    if constraint is not None:
        _bound(ax, constraint, factor, unit, max((v for v in shown if math.isfinite(v)), default=0.0))
    ax.set_ylabel(f"{series.name}{f' ({unit})' if unit else ''}")
    ax.grid(alpha=0.3)
    if metric_spec(series.name).unit in _FROM_ZERO:
        from_zero(ax)


def _bound(ax: Axes, constraint: Constraint, factor: float, unit: str, top: float) -> None:
    """The constraint's bound as a dotted red line; named in the legend only when it lies far above the points
    (``rss_peak_gib <= 4`` over 30 MiB would flatten them into a line at 0)."""
    bound = constraint.bound * factor
    text = f"bound: {constraint.op} {bound:g}{f' {unit}' if unit else ''}"
    if top > 0 and bound > 3 * top:
        ax.plot([], [], linestyle="none", label=f"{text} (far above)")
        return
    ax.axhline(bound, color="tab:red", linestyle=":", linewidth=1.5, label=text)
