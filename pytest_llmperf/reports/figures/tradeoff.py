"""Trade-offs between a study's points: memory against global accuracy, and the Pareto front of the study's
objective against the metric it trades with. Every point is labelled with its knob value, the chosen one starred
and in bold, error bars on both axes where the points have them, and a memory axis starts at 0."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.reports.figures import (
    CHOSEN,
    Series,
    error_extents,
    figure,
    from_zero,
    latency_scale,
    legend,
    memory_scale,
)

#: The axes' size in points that ``label_offsets`` estimates boxes in (the default 6.4 x 4 in figure).
_AXES = (370.0, 230.0)


def label_offsets(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str],
                  x_span: tuple[float, float] | None = None,
                  y_span: tuple[float, float] | None = None, first: int | None = None) -> list[tuple[float, float]]:
    """Offsets (in points) for each point's label so that labels of points close together are not printed over
    each other: each label (``first``'s, the chosen point's, before the others, then from left to right) takes
    the first place near its point whose box meets no label placed before it and
    stays inside the axes: above it, right then left (a negative x offset: align it right), then below it, then
    a line further out. Boxes are estimated for the default figure (font size 9: ~5.5 points a character, 11 a
    line, an axes ~370 x 230 points with 15% margins) over the data's range, or over ``x_span``/``y_span`` when
    an axis shows more than the data (one drawn from 0)."""
    def fractions(values: Sequence[float], size: float, span: tuple[float, float] | None) -> list[float]:
        low, high = span if span is not None else (min(values), max(values))
        return [((value - low) / ((high - low) or 1.0) / 1.3 + 0.115) * size for value in values]

    px, py = fractions(xs, _AXES[0], x_span), fractions(ys, _AXES[1], y_span)
    boxes: list[tuple[float, float, float, float]] = []
    offsets: dict[int, tuple[float, float]] = {}
    for index in sorted(range(len(labels)), key=lambda i: (i != first, px[i], py[i])):
        width = 5.5 * len(labels[index])
        for dx, dy in _places(px[index], py[index], width, len(labels)):
            box = (px[index] + dx, py[index] + dy, px[index] + dx + width, py[index] + dy + 11.0)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                break
        boxes.append(box)
        offsets[index] = (5.0 if dx > 0 else -5.0, dy)
    return [offsets[index] for index in range(len(labels))]


def _places(x: float, y: float, width: float, count: int) -> Iterator[tuple[float, float]]:
    """Where a label's box may go, nearest first: (x offset of its left edge, y offset of its baseline)."""
    sides = (5.0, -5.0 - width)
    for level in range(count + 1):
        for dy in (5.0 + 11.0 * level, -16.0 - 11.0 * level):
            for dx in sides:
                if 0 <= x + dx <= _AXES[0] - width and 0 <= y + dy <= _AXES[1] - 11.0:
                    yield dx, dy
    yield sides[0], 5.0 + 11.0 * (count + 1)  # (crowded everywhere: above the others)


def unit_scale(name: str, values: Sequence[float | None]) -> tuple[float, str]:
    """How a metric's values are shown: latency in ms below a second, memory in MiB below a GiB, else as is."""
    unit = metric_spec(name).unit
    if unit == "s":
        return latency_scale(values)
    if unit == "GiB":
        return memory_scale(values)
    return 1.0, "" if unit in ("score", "x") else unit


def _scatter(ax: Axes, x: Series, y: Series, scales: tuple[float, float], chosen: int | None,
             label: str | None = None) -> tuple[list[float], list[float]]:
    """The points (grey), their error bars and the chosen point's star; returns the shown xs, ys."""
    xs = [float(v or 0.0) * scales[0] for v in x.values]
    ys = [float(v or 0.0) * scales[1] for v in y.values]
    ax.scatter(xs, ys, s=40, color="tab:gray", zorder=3, label=label)
    if x.has_bars or y.has_bars:
        ax.errorbar(xs, ys, xerr=error_extents(xs, x.bars or [None] * len(xs), scales[0]),
                    yerr=error_extents(ys, y.bars or [None] * len(ys), scales[1]), fmt="none",
                    ecolor="tab:gray", alpha=0.7, capsize=3, linewidth=1.0, zorder=2)
    if chosen is not None:
        ax.scatter([xs[chosen]], [ys[chosen]], marker="*", s=280, color=CHOSEN, edgecolors="black",
                   linewidths=0.6, zorder=5)
    return xs, ys


def _annotate(ax: Axes, labels: Sequence[str], xs: Sequence[float], ys: Sequence[float], chosen: int | None,
              x_span: tuple[float, float] | None = None, y_span: tuple[float, float] | None = None) -> None:
    """Each point's label, the chosen one's ``(chosen)`` and in bold, placed first (nearest its star)."""
    texts = [label + (" (chosen)" if index == chosen else "") for index, label in enumerate(labels)]
    offsets = label_offsets(xs, ys, texts, x_span, y_span, chosen)
    for index, (text, x, y, offset) in enumerate(zip(texts, xs, ys, offsets, strict=True)):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=offset, ha="left" if offset[0] > 0 else "right",
                    fontsize=9, fontweight="bold" if index == chosen else "normal")


def memory_vs_accuracy(labels: Sequence[str], memory: Series, accuracy: Series, chosen: int | None = None) -> Figure:
    """One point per knob value: memory (x, from 0) against the mean accuracy over the tasks (y), each labelled,
    with the memory's interquartile range and the mean's standard error as error bars."""
    fig = figure()
    ax = fig.add_subplot()
    factor, unit = memory_scale(memory.values)
    xs, ys = _scatter(ax, memory, accuracy, (factor, 1.0), chosen)
    ax.margins(0.15)
    from_zero(ax, "x")
    _annotate(ax, labels, xs, ys, chosen, x_span=(0.0, max(xs)))
    ax.set_xlabel(f"{memory.name} ({unit})")
    ax.set_ylabel("global accuracy (mean over tasks)")
    ax.set_title("Memory vs accuracy")
    ax.grid(alpha=0.3)
    legend(ax, [memory, accuracy], chosen, loc="best")
    return fig


def pareto_front(labels: Sequence[str], x: Series, y: Series, x_higher: bool, y_higher: bool,
                 chosen: int | None = None, excluded: Sequence[bool] = ()) -> tuple[Figure, list[str]]:
    """Every point labelled; the non-dominated ones (better or equal on both, better on one) joined as the
    front; the points the study's rule excluded crossed out. Returns the figure and the labels on the front."""
    raw_x, raw_y = [float(v or 0.0) for v in x.values], [float(v or 0.0) for v in y.values]
    front = [label for label, a, b in zip(labels, raw_x, raw_y, strict=True) if not any(
        _at_least(ox, a, x_higher) and _at_least(oy, b, y_higher) and (ox != a or oy != b)
        for ox, oy in zip(raw_x, raw_y, strict=True))]
    fig = figure()
    ax = fig.add_subplot()
    (x_factor, x_unit), (y_factor, y_unit) = unit_scale(x.name, x.values), unit_scale(y.name, y.values)
    xs, ys = _scatter(ax, x, y, (x_factor, y_factor), chosen, "dominated" if len(front) < len(labels) else None)
    on_front = sorted((a, b) for label, a, b in zip(labels, xs, ys, strict=True) if label in front)
    ax.plot([a for a, _ in on_front], [b for _, b in on_front], marker="o", color="tab:red", label="Pareto front",
            zorder=3.5)
    crossed = [i for i, out in enumerate(excluded) if out]
    if crossed:
        ax.scatter([xs[i] for i in crossed], [ys[i] for i in crossed], marker="x", s=90, color="black", zorder=4,
                   label="excluded by the rule")
    ax.margins(0.15)
    spans: list[tuple[float, float] | None] = [None, None]
    for index, (axis, unit, shown) in enumerate((("x", x_unit, xs), ("y", y_unit, ys))):
        if unit in ("GiB", "MiB"):
            from_zero(ax, axis)
            spans[index] = (0.0, max(shown))
    _annotate(ax, labels, xs, ys, chosen, spans[0], spans[1])
    ax.set_xlabel(_axis_label(x, x_unit, x_higher))
    ax.set_ylabel(_axis_label(y, y_unit, y_higher))
    ax.set_title(f"Pareto front: {x.name} vs {y.name}")
    ax.grid(alpha=0.3)
    legend(ax, [x, y], chosen, loc="best")
    return fig, front


def _axis_label(series: Series, unit: str, higher: bool) -> str:
    role = ", objective" if series.objective else ""
    return f"{series.name}{f' ({unit})' if unit else ''} ({'higher' if higher else 'lower'} is better{role})"


def _at_least(other: float, value: float, higher: bool) -> bool:
    return other >= value if higher else other <= value


def finite(values: Sequence[float | None]) -> bool:
    """Every value measured and finite: a point the trade-off figures can place."""
    return all(value is not None and math.isfinite(value) for value in values)
