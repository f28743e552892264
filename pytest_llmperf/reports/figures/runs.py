"""Before/after figures of ``compare --plot``: grouped bars per run, and the %-change chart per metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from pytest_llmperf.reports.figures import figure, scaled

#: Colours of the change chart: what the gate would say of each change.
MARK_COLOURS = {"better": "tab:green", "worse": "tab:red", "within tolerance": "tab:gray", "same": "tab:gray"}


def grouped_bars(title: str, groups: Sequence[str], runs: Sequence[str],
                 values: Mapping[str, Sequence[float | None]], unit: str, factor: float = 1.0) -> Figure:
    """One group of horizontal bars per ``groups`` entry (test and metric, read down the page), one bar per run,
    each with its value; a value a run does not have leaves its bar out."""
    fig = figure(9.0, max(3.0, 0.28 * len(groups) * max(1, len(runs)) + 1.4))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(runs))
    for index, run in enumerate(runs):
        widths = scaled(values[run], factor)
        positions = [g + (index - (len(runs) - 1) / 2) * height for g in range(len(groups))]
        bars = ax.barh(positions, widths, height, label=run)
        ax.bar_label(bars, fmt="%.4g", fontsize=7, padding=2)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    ax.margins(x=0.15)
    return fig


def change_chart(rows: Sequence[str], runs: Sequence[str], changes: Mapping[str, Sequence[float | None]],
                 marks: Mapping[str, Sequence[str]]) -> Figure:
    """Horizontal bars: each metric's change in % from the first run, one bar per later run, coloured by what
    the gate says (better green, worse red, within tolerance grey)."""
    fig = figure(8.0, max(3.0, 0.35 * len(rows) * max(1, len(runs)) + 1.5))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(runs))
    for index, run in enumerate(runs):
        positions = [r + (index - (len(runs) - 1) / 2) * height for r in range(len(rows))]
        colours = [MARK_COLOURS.get(mark, "tab:gray") for mark in marks[run]]
        bars = ax.barh(positions, scaled(changes[run], 1.0), height, color=colours,
                       edgecolor="black" if len(runs) > 1 and index else None)
        ax.bar_label(bars, fmt="%+.3f%%", fontsize=7, padding=2)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"change from {'the first run' if len(runs) > 1 else 'before'} (%)")
    shown = runs[0] if len(runs) == 1 else f"{runs[0]} (plain bars), {', '.join(runs[1:])} (outlined, in order)"
    ax.set_title(f"Change per metric: {shown}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.2)
    from matplotlib.patches import Patch

    handles = [Patch(color=colour, label=mark) for mark, colour in MARK_COLOURS.items() if mark != "same"]
    # Outside the axes: inside, it covered the label of the last bar (a +25% change read as nothing).
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
