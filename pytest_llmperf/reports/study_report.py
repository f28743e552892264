"""A study in the reports: the table of every point (metrics as rows, knob values as columns, accuracy with its
stderr), the operating point and the sentence that explains it, and its figures (``reports/figures``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from pytest_llmperf.core.metrics import format_value, metric_spec
from pytest_llmperf.core.operating_point import MEMORY_METRICS, accuracy_metrics
from pytest_llmperf.core.session_studies import StudyResult

_THROUGHPUT = ("completion_tok_s", "total_tok_s")
_LATENCY = ("e2e_p50", "e2e_p90", "e2e_p99", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")
_FIDELITY = ("kl_mean", "kl_max", "top1_agree")
#: Figure kinds in the order they are drawn and listed.
FIGURES = ("memory", "speed", "accuracy_heatmap", "accuracy_normalised", "memory_vs_accuracy", "pareto")


def _measured(result: StudyResult, names: Sequence[str]) -> list[str]:
    return [name for name in dict.fromkeys(names)
            if any(point.metrics.get(name) is not None for point in result.points)]


def key_metrics(result: StudyResult) -> list[str]:
    """The metrics the terminal shows: the rule's, memory, speed, latency, fidelity and accuracy."""
    rule = [result.spec.objective, *(c.metric for c in result.spec.constraints)]
    return _measured(result, [*rule, *MEMORY_METRICS, *_THROUGHPUT, "e2e_p50", "e2e_p99", "tpot_p50", "ttft_p99",
                              *_FIDELITY, *accuracy_metrics(result.points)])


def _cell(result: StudyResult, index: int, name: str) -> str:
    point = result.points[index]
    value, error = point.metrics.get(name), point.stderr.get(name)
    return format_value(value) + (f" ±{error:.2g}" if error is not None and value is not None else "")


def study_table(result: StudyResult, names: Sequence[str]) -> list[tuple[str, ...]]:
    """Header (knob values, the chosen one starred) and one row per metric."""
    chosen = result.choice.chosen.test if result.choice else None
    header = ("metric", *(p.value_label() + (" *" if p.test == chosen else "") for p in result.points))
    return [header, *((name, *(_cell(result, i, name) for i in range(len(result.points)))) for name in names)]


def _verdict_lines(result: StudyResult) -> list[str]:
    lines = []
    if result.choice is not None:
        lines.append(f"operating point: {result.choice.explanation}")
    if result.problem is not None:
        lines.append(f"no operating point: {result.problem}")
    if result.change is not None:
        lines.append(result.change)
    lines += result.notes
    if result.failure is not None:
        lines.append(f"FAILED {result.failure}")
    return lines


def render_study(result: StudyResult, report_dir: Path | None = None) -> list[str]:
    """The study's lines for the terminal summary."""
    from pytest_llmperf.reports.table import align

    axis = ", ".join(result.spec.axis)
    lines = [f"study {result.study} over {axis} ({len(result.points)} of {result.size} points; rule: "
             f"{result.spec.describe()}):"]
    table = study_table(result, key_metrics(result))
    lines += ["  " + line for line in align(table, numeric=set(range(1, len(table[0]))))]
    lines += ["  " + line for line in _verdict_lines(result)]
    if result.figures:
        where = f" in {report_dir}" if report_dir is not None else ""
        lines.append(f"  figures{where}: {', '.join(result.figures)}")
    return lines


def study_markdown(result: StudyResult) -> list[str]:
    """The study's section of the Markdown report: every metric of every point, the choice, the figures."""
    every = sorted({name for point in result.points for name in point.metrics}, key=_order)
    table = study_table(result, _measured(result, every))
    lines = [f"### Study: {result.study}", "", f"Knob: {', '.join(result.spec.axis)}; rule: {result.spec.describe()}; "
             f"{len(result.points)} of {result.size} points (* chosen).", ""]
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table[1:]]
    verdict = _verdict_lines(result)
    if verdict:
        lines += ["", *[f"**{line}**" if line.startswith("operating point:") else f"- {line}" for line in verdict]]
    if result.figures:
        lines += ["", *[f"![{Path(figure).stem}]({figure})" for figure in result.figures]]
    return lines


def _order(name: str) -> tuple[int, str]:
    unit = metric_spec(name).unit
    rank = {"tok/s": 0, "req/s": 0, "s": 1, "GiB": 2, "score": 4}.get(unit, 3)
    return rank, name


def safe_name(study: str) -> str:
    """``perf_tests/test_x.py::test_y`` -> ``perf_tests-test_x-test_y`` (a file name stem)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", re.sub(r"\.py(::|$)", r"\1", study)).strip("-")


def draw_study(result: StudyResult, directory: Path) -> list[Path]:
    """Every figure kind the study's metrics allow, as PNG files in ``directory``."""
    from pytest_llmperf.reports.figures import save, versus
    from pytest_llmperf.reports.figures.accuracy import accuracy_heatmap, normalised_curves
    from pytest_llmperf.reports.figures.knob import memory_vs_knob, speed_vs_knob
    from pytest_llmperf.reports.figures.tradeoff import memory_vs_accuracy, pareto_front

    points, axis = result.points, ", ".join(result.spec.axis)
    labels = [point.value_label() for point in points]

    def series(names: Sequence[str]) -> dict[str, list[float | None]]:
        return {name: [point.metrics.get(name) for point in points] for name in _measured(result, names)}

    # GPU memory when the study has it (host RSS beside tens of GiB would be a flat line at 0), else host RSS.
    memory, tasks = series(MEMORY_METRICS[:2]) or series(MEMORY_METRICS[2:]), accuracy_metrics(points)
    scores = {task: [point.metrics.get(task) for point in points] for task in tasks}
    stderr = {task: [point.stderr.get(task) for point in points] for task in tasks}
    figures = {}
    if memory:
        figures["memory"] = memory_vs_knob(axis, labels, memory)
    throughput, latency = series(_THROUGHPUT), series(_LATENCY)
    if throughput or latency:
        figures["speed"] = speed_vs_knob(axis, labels, throughput, latency)
    if tasks:
        figures["accuracy_heatmap"] = accuracy_heatmap(versus("Accuracy per task", axis), labels, axis, scores, stderr)
        figures["accuracy_normalised"] = normalised_curves(axis, labels, scores, stderr)
    chosen = result.choice.chosen.value_label() if result.choice else None
    if tasks and memory:
        name, values = next(iter(memory.items()))
        if all(v is not None for v in values):
            means = [sum(float(scores[t][i] or 0.0) for t in tasks) / len(tasks) for i in range(len(points))]
            figures["memory_vs_accuracy"] = memory_vs_accuracy(labels, [float(v or 0.0) for v in values], means, name,
                                                               chosen)
    x: str | None = next(iter(throughput), None)
    y: str | None = next((name for name in ("e2e_p99", "tpot_p99", "ttft_p99") if name in latency), None)
    y = y or next(iter(memory), None)
    if x and y and all(point.metrics.get(x) is not None and point.metrics.get(y) is not None for point in points):
        figures["pareto"], _ = pareto_front(labels, [float(p.metrics[x] or 0.0) for p in points],
                                            [float(p.metrics[y] or 0.0) for p in points], x, y,
                                            metric_spec(x).direction == "higher", metric_spec(y).direction == "higher")
    stem = safe_name(result.study)
    return [save(figures[kind], directory / f"{stem}-{kind}.png") for kind in FIGURES if kind in figures]
