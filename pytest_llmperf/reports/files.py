"""Where the reports go: the JSON and Markdown files of ``--llmperf-report`` and ``$GITHUB_STEP_SUMMARY``.

A run of the whole suite writes the report afresh. A run of part of it (``partial_reasons``: ``-k``, test ids or
other paths on the command line, perf tests deselected by ``-m``, ``--lf``, a run stopped early) merges its tests
into the report already there instead, so the main job's report is not lost to a one-test ``--update-baselines``:
each entry names the run that wrote it (``json_report.merge_reports``).
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmperf.core.baseline import write_atomically
from pytest_llmperf.core.session import LlmperfSession
from pytest_llmperf.reports.json_report import REPORT_SCHEMA, merge_reports, outcome_from_json, render_json, stamp_run
from pytest_llmperf.reports.markdown import render_markdown


def report_paths(path: Path) -> tuple[Path, Path]:
    """The JSON and Markdown report files of ``--llmperf-report PATH``: a ``.md`` PATH is the Markdown (the
    JSON goes beside it as ``.json``), any other PATH is the JSON (the Markdown beside it as ``.md``)."""
    if path.suffix.lower() == ".md":
        return path.with_suffix(".json"), path
    return path, path.with_suffix(".md")


def check_report_path(path: Path, source: str) -> None:
    """Fail before anything runs when the reports could not be written at the end (``source``: the option)."""
    from pytest_llmperf.errors import LlmperfError

    for target in report_paths(path):
        if target.is_dir():
            raise LlmperfError(f"{source}: {target} is a directory; give a file path such as out/llmperf.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".llmperf-report-check-"):
            pass
    except OSError as error:
        raise LlmperfError(f"{source}: cannot write the report to {path} ({error.strerror or error})") from None


def partial_reasons(
    args: Sequence[str], invocation_dir: Path, rootdir: Path, testpaths: Sequence[str],
    options: Mapping[str, object], deselected_perf: int = 0, markexpr: str = "", stopped: str = "",
) -> list[str]:
    """Why a run covered only part of the suite (none: the whole suite). ``args``: the paths and test ids pytest
    collected from (pytest's ``config.args``, relative to ``invocation_dir``); the whole suite is ``testpaths``
    (relative to ``rootdir``), or the rootdir without them. ``options``: the selecting options given (``-k``,
    ``--lf``, ...), each with its value; ``deselected_perf``: perf tests that ``-m``/``-k``/``--deselect``/``--lf``
    left out; ``stopped``: why the run stopped before its end (``-x``, ``--maxfail``, an interruption)."""
    reasons = [f"{name} {value!r}" if isinstance(value, str) else name for name, value in options.items() if value]
    named = [arg for arg in args if "::" in arg]
    if named:
        shown = ", ".join(named[:3]) + (f" and {len(named) - 3} more" if len(named) > 3 else "")
        reasons.append(f"tests named on the command line ({shown})")
    else:
        given = [Path(invocation_dir, arg).resolve() for arg in args]
        whole = [Path(path).resolve() for pattern in testpaths
                 for path in sorted(glob.glob(str(rootdir / pattern), recursive=True)) or [str(rootdir / pattern)]]
        uncovered = [path for path in whole or [rootdir.resolve()]
                     if not any(path == arg or arg in path.parents for arg in given)]
        if uncovered:
            reasons.append(f"paths on the command line ({' '.join(args)})")
    if deselected_perf:
        reasons.append(f"{deselected_perf} perf test{'' if deselected_perf == 1 else 's'} deselected"
                       + (f" by -m {markexpr!r}" if markexpr else ""))
    if stopped:
        reasons.append(f"stopped early ({stopped})")
    return reasons


def run_selection(session: Any, run: dict[str, Any]) -> list[str]:
    """``partial_reasons`` of a finished pytest session (read from its config and options, duck-typed: the reports
    layer does not import pytest), kept in ``run["partial"]`` for the terminal summary; ``run["deselected_perf"]``:
    the perf tests the collection left out (counted by the plugin, on the xdist workers under xdist)."""
    config, option = session.config, session.config.option
    selecting = {"-k": option.keyword, "--lf": getattr(option, "lf", False), "--sw": getattr(option, "stepwise", False),
                 "--deselect": bool(option.deselect), "--collect-only": option.collectonly}
    interrupted = "interrupted" if session.exitstatus == 2 else ""  # (pytest.ExitCode.INTERRUPTED)
    stopped = str(session.shouldfail or session.shouldstop or interrupted)
    run["partial"] = partial_reasons(config.args, config.invocation_params.dir, config.rootpath,
                                     config.getini("testpaths"), selecting, int(run.get("deselected_perf", 0)),
                                     option.markexpr, stopped)
    return list(run["partial"])


def try_write_reports(session: LlmperfSession, partial: Sequence[str] = ()) -> bool:
    """``write_reports``; False, with the problem in ``session.errors`` (the summary prints it), when a file could
    not be written."""
    try:
        write_reports(session, partial)
    except OSError as error:
        # errors without a file name (a refused fsync, a full disk) name the report they were writing
        where = f" {report_paths(session.report)[0]}" if session.report is not None and not error.filename else ""
        session.errors.append(f"cannot write the llmperf report{where}: {error}")
        return False
    return True


def write_reports(session: LlmperfSession, partial: Sequence[str] = ()) -> list[Path]:
    """Write the JSON report and the Markdown beside it (``report_paths``), and append the Markdown to
    $GITHUB_STEP_SUMMARY when it is set. ``partial``: why this run covered only part of the suite
    (``partial_reasons``); such a run merges its tests into the report there, and leaves it alone when it
    measured nothing."""
    written = []
    measured = session.outcomes or session.scaling or session.studies
    report = session.report if measured or not partial else None
    if report is not None:
        written += draw_figures(session, report_paths(report)[0])
    markdown = render_markdown(session.outcomes, session.scaling, session.studies, session.root)
    if report is not None:
        json_file, markdown_file = report_paths(report)
        json_file.parent.mkdir(parents=True, exist_ok=True)
        document = json.loads(render_json(session.outcomes, session.scaling, session.root, session.studies))
        earlier = read_earlier_report(json_file) if partial else None
        run = run_id(earlier)
        document = stamp_run(document, run, partial, finished=run.split("#", 1)[0])
        markdown_text = markdown
        if earlier is not None:
            document = merge_reports(earlier, document)
            markdown_text = merged_markdown(session, document, run)
        # atomic: a run killed while writing leaves the earlier report whole (a partial run merges into it)
        write_atomically(json_file, json.dumps(document, indent=2, sort_keys=True) + "\n")
        write_atomically(markdown_file, markdown_text)
        written += [json_file, markdown_file]
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as stream:
            stream.write(markdown)
        written.append(Path(step_summary))
    return written


def read_earlier_report(json_file: Path) -> dict[str, Any] | None:
    """The report a partial run merges into; None when there is none, or it is not a report this version can
    read (then the partial run's report replaces it)."""
    try:
        data = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA or not isinstance(data.get("tests"), list):
        return None
    return data


def run_id(earlier: Mapping[str, Any] | None) -> str:
    """The run's name in the report: when it finished (UTC, to the second), unique among the report's runs."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    taken = set((earlier or {}).get("runs", {}))
    number, run = 1, stamp
    while run in taken:
        number += 1
        run = f"{stamp}#{number}"
    return run


def merged_markdown(session: LlmperfSession, document: Mapping[str, Any], run: str) -> str:
    """The Markdown of a merged report: every test in it (this run's and the earlier runs' kept), then which run
    each came from."""
    from pytest_llmperf.measure.scaling import ScalingResult

    outcomes, scaling = list(session.outcomes), list(session.scaling)
    for entry in (entry for entry in document.get("tests", []) if entry.get("run") != run):
        try:
            outcomes.append(outcome_from_json(entry))
        except (KeyError, TypeError, ValueError):
            continue  # an entry this version cannot rebuild stays in the JSON report
    for entry in document.get("scaling", []):
        if entry.get("run") != run:
            scaling.append(ScalingResult.from_json(entry))
    lines = ["", "## Runs", "",
             "This report merges runs: a run of part of the suite replaced the entries of the tests it measured "
             "and kept the others.", "", "| run | what it ran | tests in this report |", "|---|---|---|"]
    for name, info in sorted(document.get("runs", {}).items()):
        partial = info.get("partial")
        what = "part of the suite: " + "; ".join(partial) if partial else (
            "the whole suite" if partial is not None else "not recorded")
        lines.append(f"| {name}{' (this run)' if name == run else ''} | {what.replace('|', chr(92) + '|')} | "
                     f"{info.get('tests', 0)} |")
    earlier_studies = [str(entry.get("study")) for entry in document.get("studies", []) if entry.get("run") != run]
    if earlier_studies:
        lines += ["", f"Studies of earlier runs, in the JSON report: {', '.join(earlier_studies)}."]
    return render_markdown(outcomes, scaling, session.studies, session.root) + "\n".join(lines) + "\n"


def figures_dir(json_file: Path) -> Path:
    """Where the study figures go: ``<report stem>-figures/`` beside the JSON report."""
    return json_file.with_name(f"{json_file.stem}-figures")


def draw_figures(session: LlmperfSession, json_file: Path) -> list[Path]:
    """Each study's PNGs beside the report (their paths, relative to it, go into ``StudyResult.figures``); a
    study whose figures cannot be drawn says why in its notes."""
    from pytest_llmperf.reports.figures import available
    from pytest_llmperf.reports.study_report import draw_study

    if not session.studies:
        return []
    missing = available()
    written: list[Path] = []
    for study in session.studies:
        if missing is not None:
            study.notes.append(f"figures not drawn: {missing}")
            continue
        paths = draw_study(study, figures_dir(json_file))
        study.figures = [str(path.relative_to(json_file.parent)) for path in paths]
        written += paths
    return written
