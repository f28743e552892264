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
    markdown = render_markdown(session.outcomes, session.scaling)
    if session.report is not None:
        json_file, markdown_file = report_paths(session.report)
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(render_json(session.outcomes, session.scaling, session.root), encoding="utf-8")
        markdown_file.write_text(markdown, encoding="utf-8")
        written += [json_file, markdown_file]
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as stream:
            stream.write(markdown)
        written.append(Path(step_summary))
    return written
