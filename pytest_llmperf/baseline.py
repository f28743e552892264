"""Baseline files: one pretty-printed JSON file per test, written atomically.

Layout (schema 1)::

    {"schema": 1, "test": "<node id>",
     "metrics": {"<name>": {"value": <float>, "unit": "...", "direction": "higher|lower",
                            "samples": [<one value per repetition>]}},
     "workload": {...}, "fingerprint": {...}}

Writes go to a temporary file in the same directory, are flushed to disk and renamed over the target, so a
reader (or an interrupted run) only ever sees the old or the new complete file. A per-file lock serialises
writers (pytest-xdist workers) that update the same file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.errors import BaselineError, LlmperfError
from pytest_llmperf.locks import machine_lock
from pytest_llmperf.metrics import metric_spec

SCHEMA_VERSION = 1
_SAFE_PART = re.compile(r"[^A-Za-z0-9._=+\[\]-]+")


@dataclass
class MetricRecord:
    """A metric's headline value (median over repetitions) and the per-repetition samples behind it."""

    value: float
    samples: list[float] = field(default_factory=list)


@dataclass
class Baseline:
    """The stored numbers of one test."""

    test: str
    metrics: dict[str, MetricRecord]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        metrics = {}
        for name, record in sorted(self.metrics.items()):
            spec = metric_spec(name)
            metrics[name] = {
                "value": record.value,
                "unit": spec.unit,
                "direction": spec.direction,
                "samples": record.samples,
            }
        return {
            "schema": SCHEMA_VERSION,
            "test": self.test,
            "metrics": metrics,
            "workload": self.workload,
            "fingerprint": self.fingerprint,
        }


def _safe_part(part: str) -> str:
    cleaned = _SAFE_PART.sub("_", part).strip("._") or "_"
    if cleaned != part:
        # Two ids that sanitise alike must not share a file.
        cleaned += "-" + hashlib.sha256(part.encode()).hexdigest()[:8]
    return cleaned[:150]


def baseline_path(baseline_dir: Path, nodeid: str) -> Path:
    """The file of the test ``nodeid``: ``<dir>/<module path without .py>/<test name>[-<param id>].json``.

    Every component is sanitised, so a node id can neither escape ``baseline_dir`` nor collide with another.
    """
    module, _, rest = nodeid.partition("::")
    if not rest:
        raise LlmperfError(f"cannot derive a baseline path from node id {nodeid!r}")
    module_parts = [part for part in module.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    if module_parts and module_parts[-1].endswith(".py"):
        module_parts[-1] = module_parts[-1][: -len(".py")]
    name, _, param = rest.partition("[")
    leaf = name.replace("::", ".")
    if param:
        leaf += "[" + param
    parts = [_safe_part(part) for part in module_parts] + [_safe_part(leaf) + ".json"]
    path = baseline_dir.joinpath(*parts)
    resolved_dir = baseline_dir.resolve()
    if resolved_dir not in path.resolve().parents:
        raise LlmperfError(f"node id {nodeid!r} would write outside the baseline directory {baseline_dir}")
    return path


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise BaselineError(f"{path}: {message}")


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_baseline(data: object, path: Path) -> Baseline:
    """Validate the decoded JSON of a baseline file; every problem raises a BaselineError naming ``path``."""
    _require(isinstance(data, dict), path, "a baseline must be a JSON object")
    assert isinstance(data, dict)
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: schema {schema!r} is not supported (this pytest-llmperf reads schema {SCHEMA_VERSION}); "
            "re-record it with `pytest -m perf --update-baselines`"
        )
    test = data.get("test")
    _require(isinstance(test, str) and bool(test), path, "'test' must be the test's node id")
    raw_metrics = data.get("metrics")
    _require(isinstance(raw_metrics, dict), path, "'metrics' must be an object of metric name -> record")
    assert isinstance(raw_metrics, dict)
    metrics: dict[str, MetricRecord] = {}
    for name, record in raw_metrics.items():
        try:
            spec = metric_spec(name)
        except LlmperfError as error:
            raise BaselineError(f"{path}: {error}") from None
        _require(isinstance(record, dict), path, f"metric {name!r} must be an object with a 'value'")
        value = record.get("value")
        _require(_finite_number(value), path, f"metric {name!r} has value {value!r}; a finite number is required")
        samples = record.get("samples", [])
        _require(
            isinstance(samples, list) and all(_finite_number(sample) for sample in samples),
            path,
            f"metric {name!r} has samples {samples!r}; a list of finite numbers is required",
        )
        if spec.unit != "score":
            _require(value >= 0 and all(s >= 0 for s in samples), path, f"metric {name!r} cannot be negative")
        metrics[name] = MetricRecord(float(value), [float(sample) for sample in samples])
    fingerprint = data.get("fingerprint", {})
    _require(isinstance(fingerprint, dict), path, "'fingerprint' must be an object")
    workload = data.get("workload", {})
    _require(isinstance(workload, dict), path, "'workload' must be an object")
    return Baseline(test=test, metrics=metrics, fingerprint=fingerprint, workload=workload)  # type: ignore[arg-type]


def load_baseline(path: Path) -> Baseline | None:
    """The baseline at ``path``, None when there is no file; a BaselineError when it is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise BaselineError(f"{path}: cannot read baseline ({error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BaselineError(
            f"{path}: malformed JSON at line {error.lineno} column {error.colno} ({error.msg}); "
            "fix it, or delete it and run `pytest -m perf --update-baselines`"
        ) from None
    return parse_baseline(data, path)


def dumps(baseline: Baseline) -> str:
    return json.dumps(baseline.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_baseline(path: Path, baseline: Baseline) -> None:
    """Write ``baseline`` to ``path`` atomically (temp file, fsync, rename) under a per-file lock."""
    text = dumps(baseline)
    path.parent.mkdir(parents=True, exist_ok=True)
    with machine_lock(f"baseline:{path.resolve()}"):
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def stale_baselines(expected: set[Path]) -> list[Path]:
    """Baseline files beside the ``expected`` ones (same test module) that no collected test maps to.

    Only directories of collected modules are looked at, so running a subset of the suite reports nothing
    about the modules it did not collect.
    """
    stale: set[Path] = set()
    for directory in {path.parent for path in expected}:
        if directory.is_dir():
            stale.update(path for path in directory.glob("*.json") if path not in expected)
    return sorted(stale)
