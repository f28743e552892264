"""Trade-offs between a study's points: memory against global accuracy, and the Pareto front of two metrics."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from pytest_llmperf.reports.figures import figure, latency_scale, memory_scale


def label_offsets(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> list[tuple[float, float]]:
    """Offsets (in points) for each point's label so that labels of points close together are stacked, not
    printed over each other: each label takes the lowest line above its point whose box meets no label placed
    before it. Boxes are estimated for the default figure (6.4 x 4 in, font size 9: ~5.5 points a character,
    11 a line, an axes ~370 x 230 points with 15% margins)."""
    def fractions(values: Sequence[float], size: float) -> list[float]:
        low, span = min(values), (max(values) - min(values)) or 1.0
        return [((value - low) / span / 1.3 + 0.115) * size for value in values]

    px, py = fractions(xs, 370.0), fractions(ys, 230.0)
    boxes: list[tuple[float, float, float, float]] = []
    offsets: dict[int, tuple[float, float]] = {}
    for index in sorted(range(len(labels)), key=lambda i: (px[i], py[i])):
        width = 5.5 * len(labels[index])
        for level in range(len(labels) + 1):
            x0, y0 = px[index] + 5.0, py[index] + 5.0 + 11.0 * level
            box = (x0, y0, x0 + width, y0 + 11.0)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes):
                break
        boxes.append(box)
        offsets[index] = (5.0, 5.0 + 11.0 * level)
    return [offsets[index] for index in range(len(labels))]


def memory_vs_accuracy(labels: Sequence[str], memory: Sequence[float], accuracy: Sequence[float], memory_metric: str,
                       chosen: str | None = None) -> Figure:
    """One point per knob value: memory (x) against the mean accuracy over the tasks (y), each labelled."""
    fig = figure()
    ax = fig.add_subplot()
    factor, unit = memory_scale(memory)
    xs = [m * factor for m in memory]
    ax.scatter(xs, accuracy, s=40)
    for label, x, y, offset in zip(labels, xs, accuracy, label_offsets(xs, accuracy, labels), strict=True):
        ax.annotate(label + (" (chosen)" if label == chosen else ""), (x, y), textcoords="offset points",
                    xytext=offset, fontsize=9, fontweight="bold" if label == chosen else "normal")
    ax.set_xlabel(f"{memory_metric} ({unit})")
    ax.set_ylabel("global accuracy (mean over tasks)")
    ax.set_title("Memory vs accuracy")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    return fig


def pareto_front(labels: Sequence[str], xs: Sequence[float], ys: Sequence[float], x_name: str, y_name: str,
                 x_higher: bool, y_higher: bool) -> tuple[Figure, list[str]]:
    """Every point labelled; the non-dominated ones (better or equal on both, better on one) joined as the
    front. Returns the figure and the labels on the front."""
    front = [label for label, x, y in zip(labels, xs, ys, strict=True) if not any(
        _at_least(ox, x, x_higher) and _at_least(oy, y, y_higher) and (ox != x or oy != y)
        for ox, oy in zip(xs, ys, strict=True))]
    fig = figure()
    ax = fig.add_subplot()
    factor, unit = latency_scale(ys) if y_name.endswith(("_p50", "_p90", "_p95", "_p99", "_mean")) else (1.0, "")
    shown = [y * factor for y in ys]
    ax.scatter(xs, shown, s=40, color="tab:gray", label="dominated")
    on_front = sorted((x, y) for label, x, y in zip(labels, xs, shown, strict=True) if label in front)
    ax.plot([x for x, _ in on_front], [y for _, y in on_front], marker="o", color="tab:red", label="Pareto front")
    for label, x, y, offset in zip(labels, xs, shown, label_offsets(xs, shown, labels), strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, fontsize=9)
    ax.set_xlabel(f"{x_name} ({'higher' if x_higher else 'lower'} is better)")
    ax.set_ylabel(f"{y_name}{f' ({unit})' if unit else ''} ({'higher' if y_higher else 'lower'} is better)")
    ax.set_title(f"Pareto front: {x_name} vs {y_name}")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.margins(0.15)
    return fig, front


def _at_least(other: float, value: float, higher: bool) -> bool:
    return other >= value if higher else other <= value
