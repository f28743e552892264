"""Accuracy per task: the heatmap (task x knob value or run, cell text = score +- stderr) and the normalised
curves (min-max 0-1 per task), which warn where a task's spread is within its standard error."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from pytest_llmperf.reports.figures import figure, knob_ticks, scaled, versus


def accuracy_heatmap(title: str, columns: Sequence[str], column_label: str,
                     scores: Mapping[str, Sequence[float | None]],
                     stderr: Mapping[str, Sequence[float | None]] | None = None) -> Figure:
    """One row per task metric, one column per knob value (or run); the colour is the score."""
    import numpy as np

    tasks = list(scores)
    label = max((len(task) for task in tasks), default=0)  # row labels take their own width (~0.08 in a char)
    fig = figure(max(4.5, 1.3 * len(columns) + 0.08 * label + 2.0), max(2.5, 0.6 * len(tasks) + 1.6))
    ax = fig.add_subplot()
    matrix = np.array([scaled(scores[task], 1.0) for task in tasks], dtype=float)
    image = ax.imshow(matrix, aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="score")
    knob_ticks(ax, columns, column_label)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title(title)
    finite = matrix[np.isfinite(matrix)]
    middle = (float(finite.min()) + float(finite.max())) / 2 if finite.size else 0.0
    for row, task in enumerate(tasks):
        for column in range(len(columns)):
            value = matrix[row, column]
            if not math.isfinite(value):
                ax.text(column, row, "n/a", ha="center", va="center", color="black")
                continue
            error = (stderr or {}).get(task, [None] * len(columns))[column]
            text = f"{value:.3f}" + (f"\n±{error:.3f}" if error is not None else "")
            ax.text(column, row, text, ha="center", va="center", fontsize=9,
                    color="black" if value > middle else "white")
    return fig


def within_stderr(values: Sequence[float | None], stderr: Sequence[float | None]) -> bool:
    """The task's spread (max - min over the points) is no larger than its largest standard error: what the
    normalised curve shows is noise."""
    finite = [v for v in values if v is not None]
    errors = [e for e in stderr if e is not None]
    return bool(finite) and bool(errors) and max(finite) - min(finite) <= max(errors)


def normalised_curves(axis: str, labels: Sequence[str], scores: Mapping[str, Sequence[float | None]],
                      stderr: Mapping[str, Sequence[float | None]]) -> Figure:
    """Each task's score rescaled to 0 (its worst point) .. 1 (its best); a task whose spread is within its
    stderr is drawn dashed and named in a warning: normalisation makes thousandths look large."""
    fig = figure(7.0, 4.4)
    ax = fig.add_subplot()
    noisy = []
    for task, values in scores.items():
        finite = [v for v in values if v is not None]
        low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
        span = high - low
        normal = [((v - low) / span if span else 0.5) if v is not None else math.nan for v in values]
        flat = within_stderr(values, stderr.get(task, []))
        if flat:
            noisy.append(f"{task} (spread {span:.3f} <= stderr {max(e for e in stderr[task] if e is not None):.3f})")
        ax.plot(range(len(labels)), normal, marker="o", linestyle="--" if flat else "-",
                label=f"{task} [{low:.3f}..{high:.3f}]" + (" (within stderr)" if flat else ""))
    knob_ticks(ax, labels, axis)
    ax.set_ylabel("normalised score (0 = task's worst, 1 = best)")
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(versus("Normalised accuracy", axis))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if noisy:
        fig.text(0.01, 0.005, "WARNING spread within stderr, the curve is noise: " + "; ".join(noisy),
                 fontsize=8, color="firebrick", wrap=True)
        fig.set_layout_engine("constrained", rect=(0, 0.06, 1, 0.94))
    return fig
