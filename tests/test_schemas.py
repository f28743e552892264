"""The file formats as JSON Schemas (``pytest_llmperf/core/schemas``): shipped with the package, valid schemas,
and every committed baseline and study file validates against its schema with plain jsonschema (no project
code in between), so a user's own tooling can check a file the way the plugin does."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource

from pytest_llmperf.core import schemas

ROOT = Path(__file__).resolve().parents[1]
BASELINES = sorted(path for path in (ROOT / "baselines").rglob("*.json") if not path.name.endswith(".study.json"))
STUDIES = sorted((ROOT / "baselines").rglob("*.study.json"))


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    root = schemas.schema(kind)
    registry: Registry[Any] = Registry().with_resource(root["$id"], Resource.from_contents(root))
    return jsonschema.Draft202012Validator(root, registry=registry)


@pytest.mark.parametrize("kind", schemas.KINDS)
def test_the_schemas_are_valid_draft_2020_12_schemas(kind: str) -> None:
    jsonschema.Draft202012Validator.check_schema(schemas.schema(kind))


def test_the_repository_has_baselines_and_studies_to_check() -> None:
    assert len(BASELINES) >= 20 and len(STUDIES) >= 1


@pytest.mark.parametrize("path", BASELINES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_committed_baseline_validates(path: Path) -> None:
    _validator("baseline").validate(json.loads(path.read_text()))


@pytest.mark.parametrize("path", STUDIES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_committed_study_file_validates(path: Path) -> None:
    _validator("study").validate(json.loads(path.read_text()))


def test_a_broken_copy_of_a_committed_baseline_does_not_validate() -> None:
    """The schema can fail: a committed file with one sample turned into a string is refused, at its path."""
    document = json.loads(BASELINES[0].read_text())
    broken = copy.deepcopy(document)
    name = next(name for name, record in broken["metrics"].items() if record.get("samples"))
    broken["metrics"][name]["samples"][0] = "fast"
    with pytest.raises(jsonschema.ValidationError) as error:
        _validator("baseline").validate(broken)
    assert list(error.value.absolute_path) == ["metrics", name, "samples", 0]
    found = schemas.problem(broken, "baseline")
    assert found is not None and ".samples[0]: 'fast' is not of type 'number' (expected a finite number)" in found


def test_the_schemas_ship_in_the_package() -> None:
    package = ROOT / "pytest_llmperf" / "core" / "schemas"
    assert {path.name for path in package.glob("*.schema.json")} == {f"{kind}.schema.json" for kind in schemas.KINDS}
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"pytest_llmperf.core.schemas" = ["*.json"]' in pyproject


def test_the_docs_example_validates_with_plain_jsonschema() -> None:
    """docs/baselines.md's example runs as written, and its validator refuses a broken document."""
    import re

    text = (ROOT / "docs" / "baselines.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "jsonschema" in block)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/baselines.md", "exec"), namespace)
    with pytest.raises(jsonschema.ValidationError):
        namespace["validator"].validate({"schema": 1, "test": "t", "metrics": {"e2e_p99": {"value": "fast"}}})
