"""``python -m pytest_llmperf compare``: runs side by side (two or more JSON reports), and one report's A/B tables.

Per metric: each run's value, then for every later run its difference from the first and the change in % (three
decimals: -4.960, not -5.0), a mark that knows what the gate knows: a change within the metric's tolerance
(the one the report gated it with, else the built-in default) is "within tolerance", beyond it "better" or
"worse" by the metric's direction; and the test's status in each run ("passed -> not judged": a change the gate
did not judge is no verdict), with "workload changed" when a later run measured another workload. The
fingerprint and workload differences of each later run from the first are listed under the table, test by test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.core.metrics import is_accuracy, metric_spec
from pytest_llmperf.reports.table import align

Key = tuple[str, str]


@dataclass(frozen=True)
class ReportedTest:
    """What compare reads of one test in a report besides its metrics."""

    fingerprint: dict[str, Any]
    #: ``n_predict``, ``requests``...: a throughput measured on other work is another measurement.
    workload: dict[str, Any]
    #: ``passed``, ``regressed``, ``not judged``... (``-`` when the report has none).
    status: str


@dataclass
class Run:
    """One JSON report, as compare reads it."""

    label: str
    values: dict[Key, float]
    #: The file the run was read from (named in errors); the label when it came from elsewhere.
    source: str = ""
    tolerances: dict[Key, str] = field(default_factory=dict)
    stderr: dict[Key, float] = field(default_factory=dict)
    #: Every test of the report (a test with no finite value too: its fingerprint is there).
    entries: dict[str, ReportedTest] = field(default_factory=dict)

    @property
    def tests(self) -> set[str]:
        """The tests the run measured (a test with no finite value counts: its fingerprint is there)."""
        return {test for test, _ in self.values} | set(self.entries)


def read_run(path: Path, label: str) -> Run:
    """A JSON report as compare reads it: each metric's value, the tolerance it had and its stderr, and each
    test's fingerprint, workload and status. Raises LlmperfError naming a file that is no report."""
    from pytest_llmperf.errors import LlmperfError
    from pytest_llmperf.reports.json_report import load_report_values

    run = Run(label, load_report_values(path), source=str(path))  # (checks the file, naming it)
    try:
        for test in json.loads(path.read_text(encoding="utf-8"))["tests"]:
            run.entries[test["test"]] = ReportedTest(dict(test.get("fingerprint") or {}),
                                                  dict(test.get("workload") or {}), str(test.get("status") or "-"))
            for metric in test["metrics"]:
                key = (test["test"], metric["metric"])
                if metric.get("tolerance"):
                    run.tolerances[key] = str(metric["tolerance"]["text"])
                if metric.get("stderr") is not None:
                    run.stderr[key] = float(metric["stderr"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise LlmperfError(f"{path}: not a pytest-llmperf JSON report ({error})") from None
    return run


def check_common_tests(runs: Sequence[Run]) -> None:
    """Raise LlmperfError naming the files when a later run has no test in common with the first: a table of
    "not in" cells compares nothing, and an exit status of 0 would read as "no regression"."""
    from pytest_llmperf.errors import LlmperfError

    first = runs[0]
    for run in runs[1:]:
        if not first.tests & run.tests:
            raise LlmperfError(
                f"{first.source or first.label} and {run.source or run.label} have no test in common "
                f"({len(first.tests)} and {len(run.tests)} tests): compare reports of runs of the same tests"
            )


def labels_of(paths: Sequence[Path]) -> list[str]:
    """Short distinct names of the reports: file stems, with the folder when two stems are alike."""
    stems = [path.stem for path in paths]
    if len(set(stems)) == len(stems):
        return stems
    longer = [f"{path.parent.name}/{path.stem}" for path in paths]
    return longer if len(set(longer)) == len(longer) else [f"{i + 1}:{stem}" for i, stem in enumerate(stems)]


def value_text(value: float | None) -> str:
    """A run's value with six significant digits (the table's differences are computed from these)."""
    return "-" if value is None else f"{value:.6g}"


def percent(change: float) -> str:
    """A change in % with three decimals (-4.960, -0.098); a smaller non-zero one in two significant digits."""
    if change != 0 and abs(change) < 0.0005:
        return f"{change:+.1e}"
    return f"{change:+.3f}"


@dataclass(frozen=True)
class Change:
    difference: float
    percent: float | None
    mark: str  # "same", "within tolerance", "better", "worse"


def change_of(key: Key, old: float, new: float, tolerance_text: str | None, stderr: float | None) -> Change:
    """``new`` against ``old`` under the metric's tolerance (``tolerance_text``, else the built-in default)."""
    from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable, parse_tolerance
    from pytest_llmperf.errors import LlmperfError

    metric = key[1]
    spec = metric_spec(metric)
    difference = new - old
    pct = difference / abs(old) * 100 if old else None
    if difference == 0:
        return Change(0.0, pct, "same")
    try:
        tolerance = parse_tolerance(tolerance_text, spec, "the report") if tolerance_text else \
            ToleranceTable([("built-in default", DEFAULT_TOLERANCES)]).for_metric(metric)
        allowed: float | None = tolerance.allowed(old, stderr)
    except LlmperfError:
        allowed = None  # (a stderr tolerance without a stderr: no band to be within)
    if allowed is not None and abs(difference) <= allowed:
        return Change(difference, pct, "within tolerance")
    better = difference > 0 if spec.direction == "higher" else difference < 0
    return Change(difference, pct, "better" if better else "worse")


def compare_runs(runs: Sequence[Run]) -> tuple[list[str], list[str], list[str]]:
    """The table lines (then the fingerprint differences), the regressions beyond tolerance, as
    ``"test metric: run a -> run b ..."`` lines, and the gates of the first run that a later run dropped
    (``dropped_gates``), both for ``--fail-on-regression``. Raises LlmperfError when the runs share no test."""
    check_common_tests(runs)
    first, later = runs[0], runs[1:]
    if len(runs) == 2:
        header: tuple[str, ...] = ("test", "metric", first.label, later[0].label, "difference", "change %", "",
                                   "status")
    else:
        header = ("test", "metric", *(run.label for run in runs),
                  *(f"{cell} {run.label}" for run in later for cell in ("diff", "%", "mark")), "status")
    rows, regressions = [], []
    for key in sorted(set().union(*(run.values for run in runs))):
        values = [run.values.get(key) for run in runs]
        cells = [*key, *(value_text(value) for value in values)]
        status = status_of(runs, key[0])
        for run, value in zip(later, values[1:], strict=True):
            old = values[0]
            if old is None or value is None or not (math.isfinite(old) and math.isfinite(value)):
                missing = first.label if old is None else run.label if value is None else None
                cells += ["-", "-", f"not in {missing}" if missing else "-"]
                continue
            stderr = _combined(first.stderr.get(key), run.stderr.get(key))
            change = change_of(key, old, value, run.tolerances.get(key) or first.tolerances.get(key), stderr)
            cells += [f"{change.difference:+.4g}" if change.difference else "0",
                      "-" if change.percent is None else percent(change.percent) if change.difference else "0.000",
                      "" if change.mark == "same" else change.mark]
            if change.mark == "worse":
                shown = "" if change.percent is None else f" ({percent(change.percent)} %)"
                regressions.append(f"{key[0]} {key[1]}: {first.label} {value_text(old)} -> {run.label} "
                                   f"{value_text(value)}{shown}{f'; status {status}' if status else ''}")
        rows.append((*cells, status))
    marks = {6} if len(runs) == 2 else set(range(len(runs) + 4, len(header) - 1, 3))
    lines = align([header, *rows], numeric=set(range(2, len(header) - 1)) - marks)
    for run in later:
        for what, changes in (("fingerprint", fingerprint_changes(first, run)),
                              ("workload", workload_changes(first, run))):
            if changes:
                lines += ["", f"{what} changes {first.label} -> {run.label}:", *[f"  {line}" for line in changes]]
    return lines, regressions, dropped_gates(runs)


def status_of(runs: Sequence[Run], test: str) -> str:
    """The test's status in each run, ``passed -> not judged`` (one word when every run agrees; ``-`` for a run
    without the test), and ``workload changed`` when a later run measured it with another workload."""
    statuses = [run.entries[test].status if test in run.entries else "-" for run in runs]
    if all(status == "-" for status in statuses):
        return ""
    text = statuses[0] if len(set(statuses)) == 1 else " -> ".join(statuses)
    first = runs[0].entries.get(test)
    if first is not None and any(run.entries[test].workload != first.workload for run in runs[1:]
                                 if test in run.entries):
        text += ", workload changed"
    return text


def dropped_gates(runs: Sequence[Run]) -> list[str]:
    """The tests and metrics the first run gated that a later run lacks, one line each: a gate a run silently
    dropped (the test deselected or renamed, the metric no longer measured) is not a pass."""
    first = runs[0]
    gated_tests = sorted({test for test, _ in first.tolerances})
    lines = []
    for run in runs[1:]:
        for test in gated_tests:
            metrics = sorted(metric for name, metric in first.tolerances if name == test)
            if test not in run.tests:
                lines.append(f"{test}: gated in {first.label} ({', '.join(metrics)}), missing from {run.label}")
                continue
            lines += [f"{test} {metric}: gated in {first.label}, no value in {run.label}"
                      for metric in metrics if (test, metric) not in run.values]
    return lines


def _combined(a: float | None, b: float | None) -> float | None:
    return math.hypot(a, b) if a is not None and b is not None else None


def fingerprint_changes(before: Run, after: Run) -> list[str]:
    """What differs between the fingerprints of the tests both runs have; a change every such test shares is
    listed once, under "every test"."""
    return _changes({test: entry.fingerprint for test, entry in before.entries.items()},
                    {test: entry.fingerprint for test, entry in after.entries.items()}, lambda change: change)


def workload_changes(before: Run, after: Run) -> list[str]:
    """What differs between the workloads of the tests both runs have (``workload.n_predict 48 -> 192``), listed
    like the fingerprint's: a throughput measured on four times the tokens is another measurement."""
    return _changes({test: entry.workload for test, entry in before.entries.items()},
                    {test: entry.workload for test, entry in after.entries.items()},
                    lambda change: f"workload.{change}")


def _changes(before: Mapping[str, dict[str, Any]], after: Mapping[str, dict[str, Any]],
             shown: Callable[[str], str]) -> list[str]:
    from pytest_llmperf.core.fingerprint import diff

    shared = sorted(set(before) & set(after))
    per_test = {test: [shown(change) for change in diff(before[test], after[test])] for test in shared}
    common = set.intersection(*(set(changes) for changes in per_test.values())) if per_test else set()
    lines = [f"every test: {change}" for change in sorted(common)] if len(shared) > 1 else []
    for test, changes in per_test.items():
        own = [change for change in changes if change not in common or len(shared) == 1]
        lines += [f"{test}: {change}" for change in own]
    return lines


_THROUGHPUT = ("completion_tok_s", "prompt_tok_s", "total_tok_s")
#: The memory metrics of ``memory.png``, and what each is (its title names those drawn).
_MEMORY = {"mem_max_gib": "GPU peak", "mem_mean_gib": "GPU mean", "rss_peak_gib": "host peak RSS"}
#: The figures ``compare --plot`` draws, each when the runs have its metrics.
RUN_FIGURES = ("throughput", "memory", "accuracy", "change")


def memory_title(metrics: Iterable[str]) -> str:
    """``Memory per run: GPU peak and mean, host peak RSS``: what the bars are, from the metrics drawn."""
    drawn = set(metrics)
    kinds = [kind for name, kind in _MEMORY.items() if name in drawn]
    if "GPU peak" in kinds and "GPU mean" in kinds:
        kinds[kinds.index("GPU peak"):kinds.index("GPU mean") + 1] = ["GPU peak and mean"]
    return f"Memory per run: {', '.join(kinds)}"


def draw_runs(runs: Sequence[Run], directory: Path) -> tuple[list[Path], list[str]]:
    """The before/after figures in ``directory``, and a note for each that the runs' metrics do not allow.
    Raises LlmperfError when ``directory`` is a file or cannot be made."""
    from pytest_llmperf.errors import LlmperfError
    from pytest_llmperf.reports.figures import memory_scale, save
    from pytest_llmperf.reports.figures.accuracy import accuracy_heatmap
    from pytest_llmperf.reports.figures.runs import change_chart, grouped_bars

    if directory.exists() and not directory.is_dir():
        raise LlmperfError(f"--plot {directory}: is a file, not a folder; give a folder for the figures "
                           f"(e.g. --plot {directory.with_suffix('')}-figures), which compare creates if needed")
    keys = sorted(set().union(*(run.values for run in runs)))
    labels = [run.label for run in runs]
    tests = {test for test, _ in keys}

    def name(key: Key) -> str:
        return key[1] if len(tests) == 1 else f"{key[0].rsplit('::', 1)[-1]} {key[1]}"

    def values(chosen: Sequence[Key]) -> dict[str, list[float | None]]:
        return {run.label: [run.values.get(key) for key in chosen] for run in runs}

    figures, notes = {}, []
    # One throughput per test (completion, else prompt, else total tokens/s) keeps the bars readable.
    throughput = [key for key in keys if key[1] in _THROUGHPUT and not any(
        (key[0], other) in keys for other in _THROUGHPUT[:_THROUGHPUT.index(key[1])])]
    if throughput:
        figures["throughput"] = grouped_bars("Throughput per run", [name(k) for k in throughput], labels,
                                             values(throughput), "throughput (tok/s)")
    memory = [key for key in keys if key[1] in _MEMORY]
    if memory:
        factor, unit = memory_scale([v for run in runs for k in memory if (v := run.values.get(k)) is not None])
        figures["memory"] = grouped_bars(memory_title(key[1] for key in memory), [name(k) for k in memory], labels,
                                         values(memory), f"memory ({unit})", factor)
    accuracy = [key for key in keys if is_accuracy(key[1])]
    if accuracy:
        scores = {name(key): [run.values.get(key) for run in runs] for key in accuracy}
        errors = {name(key): [run.stderr.get(key) for run in runs] for key in accuracy}
        figures["accuracy"] = accuracy_heatmap("Accuracy per task and run", labels, "run", scores, errors)
    # The change chart shows what the reports gated (every metric would be hundreds of rows).
    gated = {key for run in runs for key in run.tolerances}
    changed = [key for key in keys if all(key in run.values for run in runs) and runs[0].values[key]
               and (key in gated or not gated)]
    if changed and len(runs) > 1:
        changes: dict[str, list[float | None]] = {}
        marks: dict[str, list[str]] = {}
        for run in runs[1:]:
            found = [change_of(key, runs[0].values[key], run.values[key],
                               run.tolerances.get(key) or runs[0].tolerances.get(key),
                               _combined(runs[0].stderr.get(key), run.stderr.get(key))) for key in changed]
            changes[run.label] = [c.percent for c in found]
            marks[run.label] = [c.mark for c in found]
        figures["change"] = change_chart([name(k) for k in changed], labels[1:], changes, marks)
    for kind in RUN_FIGURES:
        if kind not in figures:
            notes.append(f"{kind}.png not drawn: no {kind} metric in every report" if kind != "change" else
                         "change.png not drawn: no metric is in every report")
    try:
        return [save(figures[kind], directory / f"{kind}.png") for kind in RUN_FIGURES if kind in figures], notes
    except OSError as error:
        raise LlmperfError(f"--plot {directory}: cannot write the figures there ({error.strerror or error}); "
                           "give a folder you can write to") from None


def ab_report(report: Mapping[Key, tuple[float, list[float]]]) -> list[str]:
    """The A/B tables of one report (``reports/ab.py``), test by test."""
    from pytest_llmperf.reports.ab import render_ab

    lines: list[str] = []
    for test in sorted({test for test, _ in report}):
        measured = {metric: value for (name, metric), (value, _) in report.items() if name == test}
        samples = {metric: values for (name, metric), (_, values) in report.items() if name == test}
        lines += render_ab(test, measured, samples)
    return lines
