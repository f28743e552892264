"""Where the reports go: the JSON and Markdown files of ``--llmperf-report`` and ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pytest_llmperf.core.session import LlmperfSession
from pytest_llmperf.reports.json_report import render_json
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


def write_reports(session: LlmperfSession) -> list[Path]:
    """Write the JSON report and the Markdown beside it (``report_paths``), and append the Markdown to
    $GITHUB_STEP_SUMMARY when it is set."""
    written = []
    if session.report is not None:
        written += draw_figures(session, report_paths(session.report)[0])
    markdown = render_markdown(session.outcomes, session.scaling, session.studies, session.root)
    if session.report is not None:
        json_file, markdown_file = report_paths(session.report)
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(render_json(session.outcomes, session.scaling, session.root, session.studies),
                             encoding="utf-8")
        markdown_file.write_text(markdown, encoding="utf-8")
        written += [json_file, markdown_file]
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as stream:
            stream.write(markdown)
        written.append(Path(step_summary))
    return written


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
