"""The file formats of pytest-llmperf as JSON Schemas (draft 2020-12), shipped with the package and validated with
jsonschema: ``baseline.schema.json`` (a test's baseline file) and ``study.schema.json`` (a study's operating
point). The schemas state the shapes once; what a schema cannot say (a metric name this version knows, a value
that may not be negative for its unit, one machine speed per sample, NaN) stays in ``core/baseline.py``.

``problem(document, "baseline", "entry")`` checks ``document`` against one part (``$defs``) of a schema and
returns the first problem as ``at <path inside the file>: <what is wrong> (<what is expected there>)``, or None.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

KINDS = ("baseline", "study")


@functools.cache
def schema(kind: str) -> dict[str, Any]:
    """The decoded schema ``<kind>.schema.json``."""
    text = resources.files(__package__).joinpath(f"{kind}.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator(kind: str, part: str | None) -> Any:
    """A validator of the whole schema (``part`` None) or of one of its ``$defs``."""
    import jsonschema  # loaded when a file is first read, not with the plugin
    from referencing import Registry, Resource

    root = schema(kind)
    registry: Registry[Any] = Registry().with_resource(root["$id"], Resource.from_contents(root))
    target = root if part is None else {"$ref": f"{root['$id']}#/$defs/{part}"}
    return jsonschema.Draft202012Validator(target, registry=registry)


def _where(path: Any) -> str:
    """``metrics['e2e_p99'].samples[1]``: a path inside the document, as a reader finds it."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if step.isidentifier() else f"[{step!r}]")
    return text.lstrip(".") or "the top level"


def errors(document: object, kind: str, part: str | None = None, at: tuple[str | int, ...] = ()) -> list[str]:
    """Every problem of ``document`` against the schema (or its ``$defs/<part>``), deepest first; ``at``: where
    ``document`` lies in its file, for the paths in the messages."""
    found = sorted(_validator(kind, part).iter_errors(document), key=lambda error: (-len(error.path), error.message))
    lines = []
    for error in found:
        described = error.schema.get("description") if isinstance(error.schema, dict) else None
        lines.append(f"at {_where((*at, *error.absolute_path))}: {error.message}"
                     + (f" (expected {described})" if described else ""))
    return lines


def problem(document: object, kind: str, part: str | None = None, at: tuple[str | int, ...] = ()) -> str | None:
    """The first problem of ``document`` against the schema (or its ``$defs/<part>``), None when it conforms."""
    found = errors(document, kind, part, at)
    return found[0] if found else None
