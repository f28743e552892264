"""Baseline files: one pretty-printed JSON file per test, written atomically.

Layout (schema 1)::

    {"schema": 1, "test": "<node id>",
     "metrics": {"<name>": {"value": <float>, "unit": "...", "direction": "higher|lower",
                            "samples": [<one value per repetition>],
                            "documents": {"key": ..., "scores": "0110..."}}},  # accuracy: per document
     "workload": {...}, "fingerprint": {...},
     "other_hardware": {"<hardware class>": {"metrics": {...}, "workload": {...}, "fingerprint": {...}}}}

A file holds one entry per hardware class (``fingerprint.hardware.class``): the first one recorded at the top
level (so a single-machine file is exactly the SPEC's minimal layout), every further class under
``other_hardware``, keyed by its class. A CPU laptop and an H100 runner thus keep their own numbers for the same
test in one file, and ``--update-baselines`` on one machine rewrites only that machine's entry.

Writes go to a temporary file in the same directory, are flushed to disk and renamed over the target, so a
reader (or an interrupted run) only ever sees the old or the new complete file. A per-file lock serialises
writers (pytest-xdist workers) that update the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.core import schemas
from pytest_llmperf.core.locks import machine_lock
from pytest_llmperf.core.metrics import invalid_value, metric_spec
from pytest_llmperf.core.paired import Documents
from pytest_llmperf.errors import BaselineError, LlmperfError

SCHEMA_VERSION = 1
_SAFE_PART = re.compile(r"[^A-Za-z0-9._=+\[\]-]+")


@dataclass
class MetricRecord:
    """A metric's headline value (median over repetitions) and the per-repetition samples behind it."""

    value: float
    samples: list[float] = field(default_factory=list)
    stderr: float | None = None  # accuracy metrics: lm-eval's standard error of the score
    #: The machine's speed (``measure/quality.py`` reference loop) during each sample's repetition, for engines
    #: that compute on this CPU: verdicts compare samples taken at the same machine speed (``core/verdict.py``).
    speeds: list[float] = field(default_factory=list)
    #: Accuracy metrics: the score of every document, for the paired verdict (``core/paired.py``).
    documents: Documents | None = None


@dataclass
class Baseline:
    """The stored numbers of one test on one hardware class."""

    test: str
    metrics: dict[str, MetricRecord]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)
    #: Data a check compares against besides the metrics (the logit-fidelity reference), stored as given.
    reference: Any = None
    #: The machine's state while the entry was measured (``core/disturbance.py`` figures, medians): later
    #: measurements are judged disturbed relative to it. Never gated.
    quality: dict[str, float | None] | None = None

    @property
    def hardware_class(self) -> str | None:
        return hardware_class(self.fingerprint)

    def to_json(self) -> dict[str, Any]:
        metrics: dict[str, dict[str, Any]] = {}
        for name, record in sorted(self.metrics.items()):
            spec = metric_spec(name)
            metrics[name] = {
                "value": record.value,
                "unit": spec.unit,
                "direction": spec.direction,
                "samples": record.samples,
            }
            if record.stderr is not None:
                metrics[name]["stderr"] = record.stderr
            if record.speeds:
                metrics[name]["machine_speeds"] = record.speeds
            if record.documents is not None:
                metrics[name]["documents"] = record.documents.to_json()
        data = {
            "schema": SCHEMA_VERSION,
            "test": self.test,
            "metrics": metrics,
            "workload": self.workload,
            "fingerprint": self.fingerprint,
        }
        if self.reference is not None:
            data["reference"] = self.reference
        if self.quality:
            data["quality"] = self.quality
        return data


def hardware_class(fingerprint: object) -> str | None:
    """The hardware class recorded in a fingerprint (None when it has none)."""
    hardware = fingerprint.get("hardware") if isinstance(fingerprint, dict) else None
    value = hardware.get("class") if isinstance(hardware, dict) else None
    return value if isinstance(value, str) else None


@dataclass
class BaselineFile:
    """A test's baseline file: one ``Baseline`` entry per hardware class, the first stored at the top level.

    An entry that does not validate (a metric a newer pytest-llmperf knows, a hand edit) is kept in
    ``unreadable`` with its error: it is an error only for the machine whose entry it is, and
    ``record_baseline`` leaves it on disk as it is.
    """

    test: str
    entries: list[Baseline]
    unreadable: dict[str | None, str] = field(default_factory=dict)

    def for_hardware(self, hardware: str | None) -> Baseline | None:
        """The entry recorded on ``hardware``; else one that names no hardware (hand-written), else None."""
        for wanted in (hardware, None):
            if wanted in self.unreadable:
                raise BaselineError(self.unreadable[wanted])
            entry = next((entry for entry in self.entries if entry.hardware_class == wanted), None)
            if entry is not None:
                return entry
        return None

    @property
    def hardware_classes(self) -> list[str | None]:
        return [entry.hardware_class for entry in self.entries] + list(self.unreadable)

    def to_json(self) -> dict[str, Any]:
        first, *others = self.entries
        data = first.to_json()
        if others:
            data["other_hardware"] = {}
            for entry in others:
                nested = entry.to_json()
                del nested["schema"], nested["test"]
                data["other_hardware"][entry.hardware_class or ""] = nested
        return data


#: Longest file name part kept from a node id; file systems allow 255 bytes, the hash and ".json" fit after it.
_MAX_PART = 150


def _safe_part(part: str) -> str:
    cleaned = _SAFE_PART.sub("_", part).strip("._") or "_"
    if cleaned != part or len(cleaned) > _MAX_PART:
        # Two ids that sanitise or shorten alike must not share a file: the hash of the whole original part
        # goes after the cut, so it is never cut away.
        cleaned = cleaned[:_MAX_PART] + "-" + hashlib.sha256(part.encode()).hexdigest()[:8]
    return cleaned


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


def study_path(baseline_dir: Path, study: str) -> Path:
    """The file of a study's operating point (``core/session_studies.py``): ``<test function>.study.json`` beside its
    points' baseline files; ``study`` is the node id without the parameter part."""
    path = baseline_path(baseline_dir, study)
    return path.with_name(path.name.removesuffix(".json") + ".study.json")


def _require(condition: bool, where: Path | str, message: str) -> None:
    if not condition:
        raise BaselineError(f"{where}: {message}")


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_baseline(data: object, path: Path) -> BaselineFile:
    """Validate the decoded JSON of a baseline file against ``schemas/baseline.schema.json`` and what a schema
    cannot say (known metric names, signs, NaN); every problem raises a BaselineError naming ``path`` and where in
    it the problem is.

    Problems of the file as a whole raise here; a problem inside one hardware class's entry is kept in
    ``BaselineFile.unreadable`` and raised when that entry is asked for.
    """
    if isinstance(data, dict) and data.get("schema") != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: schema {data.get('schema')!r} is not supported (this pytest-llmperf reads schema "
            f"{SCHEMA_VERSION}); re-record it with `pytest -m perf --update-baselines`"
        )
    found = schemas.problem(data, "baseline", "file")
    _require(found is None, path, str(found))
    assert isinstance(data, dict)
    test = data["test"]
    candidates: list[tuple[str, tuple[str, ...], object, str | None, bool]] = [
        (str(path), (), data, hardware_class(data.get("fingerprint")), False)
    ]
    candidates += [(f"{path} (other_hardware[{key!r}])", ("other_hardware", key), entry, key or None, True)
                   for key, entry in data.get("other_hardware", {}).items()]
    file = BaselineFile(test, [])
    seen: list[str | None] = []
    for where, at, entry_data, key, nested in candidates:
        seen.append(key)
        try:
            found = schemas.problem(entry_data, "baseline", "entry", at)
            _require(found is None, path, str(found))
            assert isinstance(entry_data, dict)
            entry = _parse_entry(entry_data, test, where)
            # An entry that names no hardware is stored under "" (JSON keys are strings).
            found_class = entry.hardware_class
            _require(not nested or found_class == key, where, f"its fingerprint's hardware.class is {found_class!r}")
        except BaselineError as error:
            file.unreadable[key] = str(error)
            continue
        file.entries.append(entry)
    duplicates = sorted({str(name) for name in seen if seen.count(name) > 1})
    _require(not duplicates, path, f"hardware class {', '.join(duplicates)} is stored twice")
    return file


def _parse_entry(data: dict[str, Any], test: str, path: Path | str) -> Baseline:
    """One hardware class's entry, its shape already checked against the schema; ``path`` names the file (and
    the entry, for ``other_hardware``)."""
    metrics: dict[str, MetricRecord] = {}
    for name, record in data["metrics"].items():
        try:
            spec = metric_spec(name)
        except LlmperfError as error:
            raise BaselineError(f"{path}: {error}") from None
        value, samples = record["value"], record.get("samples", [])
        _require(_finite_number(value), path, f"metric {name!r} has value {value!r}; a finite number is required")
        _require(all(_finite_number(sample) for sample in samples), path,
                 f"metric {name!r} has samples {samples!r}; a list of finite numbers is required")
        if spec.unit not in ("score", "nats"):
            _require(value >= 0 and all(s >= 0 for s in samples), path, f"metric {name!r} cannot be negative")
        stderr = record.get("stderr")
        _require(stderr is None or _finite_number(stderr), path,
                 f"metric {name!r} has stderr {stderr!r}; a finite number >= 0 is required")
        speeds = record.get("machine_speeds", [])
        _require(all(_finite_number(x) for x in speeds) and len(speeds) in (0, len(samples)), path,
                 f"metric {name!r} has machine_speeds {speeds!r}; one positive number per sample is required")
        documents = None
        if record.get("documents") is not None:
            try:
                documents = Documents.from_json(record["documents"])
            except ValueError as error:
                raise BaselineError(f"{path}: metric {name!r}: {error}") from None
        metrics[name] = MetricRecord(
            float(value), [float(sample) for sample in samples], None if stderr is None else float(stderr),
            [float(x) for x in speeds], documents,
        )
    quality = data.get("quality")
    _require(quality is None or all(v is None or _finite_number(v) for v in quality.values()), path,
             "'quality' must be an object of figure name -> number or null")
    return Baseline(test=test, metrics=metrics, fingerprint=data.get("fingerprint", {}),
                    workload=data.get("workload", {}), reference=data.get("reference"), quality=quality)


_MISSING = object()


def _read_json(path: Path, advice: str) -> Any:
    """The decoded JSON at ``path``, ``_MISSING`` when there is no file; a BaselineError naming the file (and
    ending with ``advice``) when it cannot be read or decoded."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return _MISSING  # (a directory that cannot be created fails the write, naming it)
    except (OSError, UnicodeDecodeError) as error:
        raise BaselineError(f"{path}: cannot read the baseline ({error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BaselineError(
            f"{path}: malformed JSON at line {error.lineno} column {error.colno} ({error.msg}); {advice}"
        ) from None


def load_baseline(path: Path) -> BaselineFile | None:
    """The baseline at ``path``, None when there is no file; a BaselineError when it is unreadable."""
    data = _read_json(path, "fix it, or delete it and run `pytest -m perf --update-baselines`")
    return None if data is _MISSING else parse_baseline(data, path)


def dumps(baseline: BaselineFile) -> str:
    return json.dumps(baseline.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"


#: The keys of one hardware class's entry; everything else at the top level belongs to the file.
_ENTRY_KEYS = ("metrics", "workload", "fingerprint", "reference", "quality")
_TEMPORARY = re.compile(r"^\..+\.json\..+\.tmp$")


def record_baseline(path: Path, entry: Baseline) -> BaselineFile:
    """Store ``entry`` in the file at ``path``, replacing the entry of its hardware class and keeping the rest.

    Only this machine's entry is rewritten: other hardware classes' entries (valid or not) and keys this
    version does not know stay as they were. A file this version cannot update without losing something
    (malformed JSON, another schema, another test's file) is refused with a BaselineError naming it. Read,
    merge and write happen under the directory's lock, so concurrent writers never lose each other's entries.
    """
    for name, record in entry.metrics.items():
        problem = next(
            (invalid_value(name, value) for value in (record.value, *record.samples) if invalid_value(name, value)),
            None,
        )
        if problem is not None:
            raise BaselineError(f"{path}: not written: {problem}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with machine_lock(f"baselines:{path.parent.resolve()}"):
            _remove_stale_temporaries(path.parent)
            merged = merge_entry(updatable_document(path, entry.test), entry)
            write_atomically(path, json.dumps(merged, indent=2, sort_keys=True, allow_nan=False) + "\n")
    except OSError as error:
        raise BaselineError(
            f"{path}: cannot write the baseline ({error.strerror or error}); check that the baseline directory "
            "is writable (--llmperf-baseline-dir, ini llmperf_baseline_dir)"
        ) from None
    return parse_baseline(merged, path)


def updatable_document(path: Path, test: str) -> dict[str, Any] | None:
    """The decoded file at ``path`` if ``record_baseline`` can update it without losing anything (None: no
    file); a BaselineError naming the file and what would be lost otherwise."""
    data = _read_json(
        path,
        "--update-baselines rewrites only this machine's entry and would lose the rest of the file: fix it (a "
        "merge conflict?), or delete it if nothing in it is worth keeping, and run again",
    )
    if data is _MISSING:
        return None
    if not isinstance(data, dict):
        raise BaselineError(f"{path}: not a baseline (a JSON object is required); it was not overwritten")
    if data.get("schema") != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: schema {data.get('schema')!r}; this pytest-llmperf writes schema {SCHEMA_VERSION} and "
            "would discard every entry in it: use the pytest-llmperf that wrote it, or move the file away "
            "to record it anew"
        )
    if data.get("test") != test:
        raise BaselineError(
            f"{path}: holds the baseline of test {data.get('test')!r}, not {test!r}; it was not overwritten"
        )
    if not isinstance(data.get("other_hardware", {}), dict):
        raise BaselineError(f"{path}: 'other_hardware' is not an object; it was not overwritten")
    return data


def merge_entry(document: dict[str, Any] | None, entry: Baseline) -> dict[str, Any]:
    """``document`` (a decoded baseline file) with ``entry`` in place of its hardware class's entry."""
    new = entry.to_json()
    if document is None:
        return new
    merged = dict(document)
    nested = {key: value for key, value in new.items() if key not in ("schema", "test")}
    if hardware_class(document.get("fingerprint")) == entry.hardware_class:
        for key in _ENTRY_KEYS:
            merged.pop(key, None)
        merged.update(nested)
    else:
        others = dict(document.get("other_hardware") or {})
        others[entry.hardware_class or ""] = nested
        merged["other_hardware"] = others
    return merged


def _remove_stale_temporaries(directory: Path) -> None:
    """Remove temp files of writes that were killed before their rename.

    Called under the directory's lock, which every writer in the directory holds while its temp file
    exists: a temp file seen now belongs to a writer that died.
    """
    for candidate in directory.glob(".*.tmp"):
        if _TEMPORARY.match(candidate.name):
            candidate.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    The file keeps the mode it had; a new one gets the mode the umask gives any new file (0644 under the usual
    022), not ``mkstemp``'s 0600, so a baseline written by one user stays readable to a CI job or a colleague.
    """
    descriptor, temporary = _temporary_beside(path)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _temporary_beside(path: Path) -> tuple[int, str]:
    """An exclusive new temp file ``.<name>.<random>.tmp`` beside ``path``, opened for writing with mode 0666 less
    the umask (what ``open`` gives a new file)."""
    for _ in range(100):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(temporary)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temp file name for {path.name} after 100 tries")


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


def stale_in_whole_modules(baseline_dir: Path, tests: list[tuple[str, Path]], whole: list[Path]) -> list[Path]:
    """Stale baselines of the modules among ``tests`` (node id, module path) that were collected whole: each
    lies in or under a path of ``whole`` (what pytest was given without ``::``). A test selected by node id says
    nothing about its module's other tests; a node id that cannot have a baseline makes nothing stale."""
    try:
        owned = [nodeid for nodeid, module in tests
                 if "::" in nodeid and any(root == module or root in module.parents for root in whole)]
        # A parametrized test may be a study's point: its study file is owned while the function is collected.
        expected = {baseline_path(baseline_dir, nodeid) for nodeid in owned}
        expected |= {study_path(baseline_dir, nodeid.split("[", 1)[0]) for nodeid in owned if "[" in nodeid}
    except LlmperfError:
        return []
    return stale_baselines(expected)
