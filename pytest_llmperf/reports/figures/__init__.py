"""Figures (the ``plots`` extra): one module per figure kind, each a pure function ``(data) -> Figure``.

They build ``matplotlib.figure.Figure`` objects directly (no ``pyplot``): no global backend is switched and
nothing is shown; PNGs are rendered by matplotlib's Agg canvas when saved (``save``). Axes carry units, every
scatter point is labelled with its knob value, and the default matplotlib style is kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOTS_EXTRA = "pip install 'pytest-llmperf[plots]'"


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
