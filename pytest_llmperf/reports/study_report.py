"""A study in the reports: the table of every point (metrics as rows, knob values as columns, accuracy with its
stderr), the operating point and the sentence that explains it, and its figures (``reports/figures``)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_llmperf.core.metrics import format_value, metric_spec
from pytest_llmperf.core.operating_point import MEMORY_METRICS, accuracy_metrics
from pytest_llmperf.core.session_studies import StudyResult
from pytest_llmperf.reports.figures import STDERR, Series, versus

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_THROUGHPUT = ("completion_tok_s", "total_tok_s")
_LATENCY = ("e2e_p50", "e2e_p90", "e2e_p99", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")
_FIDELITY = ("kl_mean", "kl_max", "top1_agree")
#: Figure kinds in the order they are drawn and listed.
FIGURES = ("objective", "memory", "speed", "accuracy_heatmap", "accuracy_normalised", "memory_vs_accuracy",
           "pareto")


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


def draw_study(result: StudyResult, directory: Path,
               samples: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> list[Path]:
    """Every figure kind the study's metrics allow, as PNG files in ``directory``. The error bars are each
    point's interquartile range over its repetitions (``StudyPoint.samples``, or ``samples``: test id -> metric
    -> the value of each repetition); accuracy's come from its stderr."""
    from pytest_llmperf.reports.figures import save

    if samples is None:
        samples = {point.test: point.samples for point in result.points}
    data = _FigureData(result, samples)
    figures = {kind: fig for kind, draw in _DRAWERS.items() if (fig := draw(data)) is not None}
    stem = safe_name(result.study)
    return [save(figures[kind], directory / f"{stem}-{kind}.png") for kind in FIGURES if kind in figures]


class _FigureData:
    """What the study's figures are drawn from: the points' metrics as Series (error bars included), the knob
    labels, the chosen point's index and the points the rule excluded."""

    def __init__(self, result: StudyResult, samples: Mapping[str, Mapping[str, Sequence[float]]]) -> None:
        self.result, self.samples = result, samples
        self.points, self.spec = result.points, result.spec
        self.axis = ", ".join(result.spec.axis)
        self.labels = [point.value_label() for point in result.points]
        choice = result.choice
        tests = [point.test for point in result.points]
        self.chosen = tests.index(choice.chosen.test) if choice and choice.chosen.test in tests else None
        self.excluded = [bool(choice and choice.excluded.get(test)) for test in tests]

    def series(self, name: str) -> Series:
        values = [point.metrics.get(name) for point in self.points]
        errors = [point.stderr.get(name) for point in self.points]
        objective = name == self.spec.objective
        if any(error is not None for error in errors):
            bars = [(v - e, v + e) if v is not None and e is not None else None for v, e in zip(values, errors,
                                                                                                   strict=True)]
            return Series(name, values, bars, STDERR, objective)
        return Series(name, values, [_quartiles(self.samples.get(p.test, {}).get(name, ())) for p in self.points],
                      objective=objective)

    def group(self, names: Sequence[str], units: Sequence[str]) -> list[Series]:
        """The measured metrics of ``names``, the objective first when its unit is one of ``units``."""
        objective = [self.spec.objective] if metric_spec(self.spec.objective).unit in units else []
        return [self.series(name) for name in _measured(self.result, [*objective, *names])]

    def memory(self) -> list[Series]:
        # GPU memory when the study has it (host RSS beside tens of GiB would be a flat line at 0), else host RSS.
        names = _measured(self.result, MEMORY_METRICS[:2]) or MEMORY_METRICS[2:]
        return self.group(names, ("GiB",))

    def complete(self, name: str) -> bool:
        return all(v is not None and math.isfinite(v) for v in (p.metrics.get(name) for p in self.points))


def _quartiles(samples: Sequence[float]) -> tuple[float, float] | None:
    """The 25th and 75th percentiles of a point's repetitions (linear interpolation); None under two."""
    if len(samples) < 2:
        return None
    quartiles = statistics.quantiles(samples, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def _objective_figure(data: _FigureData) -> Figure | None:
    from pytest_llmperf.reports.figures.objective import objective_vs_knob

    spec = data.spec
    if not _measured(data.result, [spec.objective]):
        return None
    constraints = [(data.series(c.metric), c) for c in spec.constraints
                   if c.metric != spec.objective and _measured(data.result, [c.metric])]
    return objective_vs_knob(data.axis, data.labels, data.series(spec.objective), spec.maximise, constraints,
                             data.chosen, data.excluded)


def _memory_figure(data: _FigureData) -> Figure | None:
    from pytest_llmperf.reports.figures.knob import memory_vs_knob

    memory = data.memory()
    return memory_vs_knob(data.axis, data.labels, memory, data.chosen) if memory else None


def _speed_figure(data: _FigureData) -> Figure | None:
    from pytest_llmperf.reports.figures.knob import speed_vs_knob

    throughput, latency = data.group(_THROUGHPUT, ("tok/s", "req/s")), data.group(_LATENCY, ("s",))
    if not (throughput or latency):
        return None
    return speed_vs_knob(data.axis, data.labels, throughput, latency, data.chosen)


def _accuracy(data: _FigureData) -> tuple[dict[str, list[float | None]], dict[str, list[float | None]]] | None:
    """Each task's scores and standard errors at every point (None: the study scored no task)."""
    tasks = accuracy_metrics(data.points)
    if not tasks:
        return None
    return ({task: [point.metrics.get(task) for point in data.points] for task in tasks},
            {task: [point.stderr.get(task) for point in data.points] for task in tasks})


def _accuracy_heatmap(data: _FigureData) -> Figure | None:
    from pytest_llmperf.reports.figures.accuracy import accuracy_heatmap

    accuracy = _accuracy(data)
    if accuracy is None:
        return None
    return accuracy_heatmap(versus("Accuracy per task", data.axis), data.labels, data.axis, *accuracy)


def _accuracy_normalised(data: _FigureData) -> Figure | None:
    from pytest_llmperf.reports.figures.accuracy import normalised_curves

    accuracy = _accuracy(data)
    return None if accuracy is None else normalised_curves(data.axis, data.labels, *accuracy)


def _memory_vs_accuracy(data: _FigureData) -> Figure | None:
    """Memory (the objective when it is one) against the mean score over the tasks, ± the mean's stderr
    (``sqrt(sum se^2) / tasks``, the tasks' errors taken as independent)."""
    from pytest_llmperf.reports.figures.tradeoff import memory_vs_accuracy

    tasks, memory = accuracy_metrics(data.points), data.memory()
    if not tasks or not memory or not data.complete(memory[0].name):
        return None
    means, bars = [], []
    for point in data.points:
        mean = sum(float(point.metrics.get(task) or 0.0) for task in tasks) / len(tasks)
        errors = [point.stderr.get(task) for task in tasks]
        error = math.sqrt(sum(e * e for e in errors if e is not None)) / len(tasks)
        means.append(mean)
        bars.append((mean - error, mean + error) if all(e is not None for e in errors) else None)
    accuracy = Series("global accuracy", means, bars, STDERR)
    return memory_vs_accuracy(data.labels, memory[0], accuracy, data.chosen)


def tradeoff_metric(result: StudyResult) -> str | None:
    """The metric the Pareto figure sets against the objective: the rule's first constraint on another metric
    (what the rule says the objective trades with), else memory, else p99 latency, else throughput (each when
    the objective is not of that kind); one measured at every point, or None."""
    objective = metric_spec(result.spec.objective).unit
    candidates = [c.metric for c in result.spec.constraints if c.metric != result.spec.objective]
    for units, names in ((("GiB",), MEMORY_METRICS), (("s",), ("e2e_p99", "tpot_p99", "ttft_p99")),
                         (("tok/s", "req/s"), _THROUGHPUT)):
        candidates += [] if objective in units else list(names)
    return next((name for name in candidates if all(
        (value := point.metrics.get(name)) is not None and math.isfinite(value) for point in result.points)), None)


def _pareto_figure(data: _FigureData) -> Figure | None:
    from pytest_llmperf.reports.figures.tradeoff import pareto_front

    other = tradeoff_metric(data.result)
    if other is None or not data.complete(data.spec.objective):
        return None
    higher = metric_spec(other).direction == "higher"
    fig, _ = pareto_front(data.labels, data.series(data.spec.objective), data.series(other), data.spec.maximise,
                          higher, data.chosen, data.excluded)
    return fig


_DRAWERS: dict[str, Callable[[_FigureData], Figure | None]] = {
    "objective": _objective_figure, "memory": _memory_figure, "speed": _speed_figure,
    "accuracy_heatmap": _accuracy_heatmap, "accuracy_normalised": _accuracy_normalised,
    "memory_vs_accuracy": _memory_vs_accuracy, "pareto": _pareto_figure,
}
