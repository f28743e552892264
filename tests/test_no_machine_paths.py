"""No development machine's absolute paths in the repository (issue 28): docs, examples, code, baselines and
reports show paths relative to the project, or placeholders."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Home and work directories of the machines this project is developed on, and of others.
MACHINE_PATH = re.compile(r"(?<![\w.~<])/(?:work|root|home|Users)/[\w.-]+")
FOLDERS = ("docs", "examples", "benchmarks", "tools", "pytest_llmperf", "perf_tests", "tests", "baselines", ".ci")
SUFFIXES = {".md", ".py", ".json", ".yml", ".yaml", ".toml", ".ini", ".sh", ".txt", ""}


def _files() -> list[Path]:
    files = [ROOT / name for name in ("README.md", "pyproject.toml", "tox.ini", "mkdocs.yml", "conftest.py")]
    for folder in FOLDERS:
        files += [path for path in (ROOT / folder).rglob("*") if path.is_file() and path.suffix in SUFFIXES
                  and "__pycache__" not in path.parts]
    return [path for path in files if path.exists() and path != Path(__file__).resolve()]


def test_the_pattern_finds_machine_paths_and_leaves_placeholders_alone() -> None:
    assert MACHINE_PATH.search("(baseline /work/main/baselines/x.json)")
    assert MACHINE_PATH.search("cache at /root/.cache/pytest-llmperf")
    assert MACHINE_PATH.search("/home/alice/proj")
    assert not MACHINE_PATH.search("~/aiperf-venv/bin/aiperf /path/to/project/baselines <rootdir>/baselines /tmp/bl")


def test_no_file_holds_a_machine_path() -> None:
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
             for path in _files()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert len(_files()) > 100
    assert found == []
