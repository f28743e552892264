"""Figures (the ``plots`` extra): one module per figure kind, each a pure function ``(data) -> Figure``.

They build ``matplotlib.figure.Figure`` objects directly (no ``pyplot``): no global backend is switched and
nothing is shown; PNGs are rendered by matplotlib's Agg canvas when saved (``save``). Axes carry units, every
scatter point is labelled with its knob value, and the default matplotlib style is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOTS_EXTRA = "pip install 'pytest-llmperf[plots]'"
#: What a study figure's error bars show, in its legend: the interquartile range (25th-75th percentile) of a
#: point's repetitions around their median, or an accuracy's standard error.
IQR = "error bars: IQR of the repetitions"
STDERR = "error bars: \u00b1 stderr"
#: The chosen operating point's colour on every figure.
CHOSEN = "goldenrod"


@dataclass(frozen=True)
class Series:
    """One metric at each knob value: its values, the error bar around each (``(low, high)`` in the metric's
    unit; None where there is none, e.g. a single repetition) and what those bars are (``IQR``, ``STDERR``)."""

    name: str
    values: Sequence[float | None]
    bars: Sequence[tuple[float, float] | None] = ()
    bar_kind: str = IQR
    #: The study's objective: drawn first, thicker, and named so in the legend.
    objective: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} (objective)" if self.objective else self.name

    @property
    def has_bars(self) -> bool:
        return any(bar is not None and bar[1] > bar[0] for bar in self.bars)


def available() -> str | None:
    """None when matplotlib can be imported, else why not (with the install command)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"matplotlib is not installed ({PLOTS_EXTRA})"
    return None


def figure(width: float = 6.4, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path


def memory_scale(values: Sequence[float | None]) -> tuple[float, str]:
    """GiB values shown in MiB when every one is below 1 GiB (a tiny model's host memory): (factor, unit)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (1024.0, "MiB") if finite and max(abs(v) for v in finite) < 1 else (1.0, "GiB")


def latency_scale(values: Sequence[float | None]) -> tuple[float, str]:
    """Seconds shown in ms when every one is below a second: (factor, unit)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return (1000.0, "ms") if finite and max(abs(v) for v in finite) < 1 else (1.0, "s")


def scaled(values: Sequence[float | None], factor: float) -> list[float]:
    """Values times ``factor``, NaN where a value is unavailable (matplotlib leaves a gap, never a fake 0)."""
    return [v * factor if v is not None else math.nan for v in values]


def knob_ticks(ax: Axes, labels: Sequence[str], axis: str | None) -> None:
    """The knob values under the x axis, slanted when they would run into each other (several knobs' values,
    ``"16, 256, False"``), and the knob names as the axis label (None: the figure labels it once)."""
    ax.set_xticks(range(len(labels)), labels)
    width_chars = ax.get_window_extent().width / 7.5 if ax.figure is not None else 60.0
    if sum(len(label) + 2 for label in labels) > width_chars:
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    if axis is not None:
        ax.set_xlabel(axis)


def versus(what: str, axis: str) -> str:
    """``"Memory vs n_ubatch"``; just ``"Memory"`` when the knob names are long (they are the x label)."""
    return f"{what} vs {axis}" if len(axis) <= 24 else what


def error_extents(values: Sequence[float], bars: Sequence[tuple[float, float] | None], factor: float = 1.0
                  ) -> list[list[float]]:
    """matplotlib's ``yerr``/``xerr`` (distances below and above each value) from absolute ``(low, high)`` bars;
    0 where a point has no bar. A bar that does not contain its value (a mean outside the quartiles) is clipped at
    the value rather than drawn inverted."""
    below = [max(0.0, v - bar[0] * factor) if bar is not None and math.isfinite(v) else 0.0
             for v, bar in zip(values, bars, strict=True)]
    above = [max(0.0, bar[1] * factor - v) if bar is not None and math.isfinite(v) else 0.0
             for v, bar in zip(values, bars, strict=True)]
    return [below, above]


def plot_series(ax: Axes, series: Series, factor: float = 1.0, chosen: int | None = None) -> None:
    """A metric's line against the knob, its error bars in the line's colour, and a star at the chosen point."""
    ys = scaled(series.values, factor)
    xs = list(range(len(ys)))
    (line,) = ax.plot(xs, ys, marker="o", label=series.label, linewidth=2.6 if series.objective else 1.4,
                      zorder=3 if series.objective else 2)
    if series.has_bars:
        ax.errorbar(xs, ys, yerr=error_extents(ys, series.bars, factor), fmt="none", ecolor=line.get_color(),
                    capsize=3, linewidth=1.0, zorder=2)
    if chosen is not None and math.isfinite(ys[chosen]):
        ax.scatter([chosen], [ys[chosen]], marker="*", s=260 if series.objective else 150, color=CHOSEN,
                   edgecolors=line.get_color(), linewidths=1.2, zorder=4)


def mark_chosen(ax: Axes, chosen: int | None) -> None:
    """The chosen knob value: a dashed line across the axes, "chosen" above it and its tick label in bold."""
    if chosen is None:
        return
    ax.axvline(chosen, color=CHOSEN, linestyle="--", linewidth=1.2, zorder=1)
    # Inside the axes, beside the top of the line: above it, it ran into the title.
    ax.annotate("chosen", (chosen, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                textcoords="offset points", ha="left", va="top", fontsize=9, fontweight="bold", color=CHOSEN)
    ticks = ax.get_xticklabels()
    if chosen < len(ticks):
        ticks[chosen].set_fontweight("bold")


def legend(ax: Axes, series: Sequence[Series], chosen: int | None, **options: Any) -> None:
    """The axes' legend: its lines, then what the error bars are and the chosen point's star, when drawn; outside
    the axes, right of them, unless ``options`` place it (inside, it covered lines at the lower right)."""
    from matplotlib.lines import Line2D

    handles, names = ax.get_legend_handles_labels()
    for kind in dict.fromkeys(s.bar_kind for s in series if s.has_bars):
        handles.append(Line2D([], [], color="gray", marker="|", markersize=11, markeredgewidth=1.4,
                              linestyle="none"))
        names.append(kind)
    if chosen is not None and series:
        handles.append(Line2D([], [], color=CHOSEN, marker="*", markersize=13, linestyle="none",
                              markeredgecolor="black", markeredgewidth=0.6))
        names.append("chosen point")
    if handles:
        placed = options or {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
        ax.legend(handles, names, fontsize=8, **placed)


def from_zero(ax: Axes, axis: str = "y") -> None:
    """Start a quantity's axis at 0: a 2% difference drawn on a zoomed axis looks like a cliff. The top gets 10%
    headroom, so the highest point's star and the "chosen" label do not sit on the frame (x: the rightmost's)."""
    if axis == "y":
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1] * 1.1, 1e-12))
    else:
        ax.set_xlim(left=0, right=max(ax.get_xlim()[1] * 1.1, 1e-12))
