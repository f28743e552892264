"""docs/development.md's map of the package names every module, under the folder that holds it, and no module
that does not exist: the map is how a newcomer finds where a concept lives."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pytest_llmperf"


def _map() -> dict[str, str]:
    """Top-level folder (``core``, ``measure``, ..., ``""`` for the package's own files) -> its text in the map."""
    text = (ROOT / "docs" / "development.md").read_text()
    block = text[text.index("```\npytest_llmperf/\n") + 4:]
    block = block[:block.index("```")]
    sections: dict[str, str] = {}
    current = ""
    for line in block.splitlines()[1:]:
        heading = re.match(r"  (\S+?)(/|\.py)\s", line)
        if heading:
            current = heading.group(1) if heading.group(2) == "/" else ""
        sections[current] = sections.get(current, "") + " " + line
    return sections


def test_every_module_is_in_the_map_under_its_folder() -> None:
    sections = _map()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py":
            continue
        folder = relative.parts[0] if len(relative.parts) > 1 else ""
        if not re.search(rf"(?<![\w/]){re.escape(path.stem)}\b", sections.get(folder, "")):
            missing.append(str(relative))
    assert not missing, f"docs/development.md's map does not name: {missing}"


def test_every_folder_in_the_map_exists() -> None:
    for folder in _map():
        if folder:
            assert (PACKAGE / folder).is_dir(), f"docs/development.md maps {folder}/, which is not in the package"


def test_the_map_can_fail() -> None:
    """The pattern does not find a module inside another word (``study`` inside ``study_report``)."""
    assert not re.search(r"(?<![\w/])study\b", " study_report (a table)")
    assert re.search(r"(?<![\w/])outcome\b", " outcome (one test's)")
