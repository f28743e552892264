"""The studies of a session: their points gathered from the outcomes (every xdist worker's), each study judged as
a whole at the end of the session, and the operating point stored beside the points' baselines.

The chosen point is kept in ``<baseline dir>/<module>/<test function>.study.json``, one entry per hardware class
(like a baseline file), written by ``--update-baselines`` when every point of the study ran and passed::

    {"schema": 1, "study": "perf_tests/test_study.py::test_kv_cache_type",
     "choices": {"<hardware class>": {"point": {"type_k": "q8_0"}, "rule": "...", "explanation": "...",
                                      "fingerprint": {...}}}}

A check run compares its choice with the stored one: a different point is reported beside what changed in the
fingerprint (library versions, hardware), and fails the session when the study asks for it
(``fail_on_change=True``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.core import schemas
from pytest_llmperf.core.baseline import hardware_class, study_path, write_atomically
from pytest_llmperf.core.fingerprint import diff
from pytest_llmperf.core.locks import machine_lock
from pytest_llmperf.core.operating_point import (
    Choice,
    NoOperatingPoint,
    StudyPoint,
    StudySpec,
    choose,
    in_axis_order,
    parse_study,
)
from pytest_llmperf.core.outcome import CheckOutcome, accept_command
from pytest_llmperf.core.session import LlmperfSession
from pytest_llmperf.errors import BaselineError, LlmperfError

STUDY_SCHEMA = 1


def study_id(nodeid: str) -> str:
    """The study of a parametrized test: its node id without the parameter part."""
    return nodeid.split("[", 1)[0]


def study_sizes(nodeids: Iterable[str]) -> dict[str, int]:
    """How many points each study has, from the node ids of its collected points."""
    return dict(Counter(study_id(nodeid) for nodeid in nodeids))


def point_info(nodeid: str, rule: Mapping[str, Any], params: Mapping[str, Any], indices: Mapping[str, int],
               size: int) -> dict[str, Any]:
    """What an outcome carries of its study (``CheckOutcome.study``): plain JSON, so xdist workers can send it.
    A knob of ``axis`` that the test does not parametrize raises, naming it."""
    spec = parse_study(rule, nodeid)
    missing = [name for name in spec.axis if name not in params]
    if missing:
        raise LlmperfError(f"{nodeid}: perf_study axis {missing[0]!r} is not a parameter of the test; parametrize it "
                           f"(@pytest.mark.parametrize({missing[0]!r}, [...])) or name one of {sorted(params)}")
    point = {name: _scalar_or_text(params[name]) for name in spec.axis}
    return {"study": study_id(nodeid), "rule": dict(rule), "size": size, "params": point,
            "label": ", ".join(f"{name}={value}" for name, value in point.items()),
            "indices": {name: int(indices.get(name, 0)) for name in spec.axis}}


def _scalar_or_text(value: Any) -> Any:
    """A parameter value as it is when it is a JSON scalar, else its text (a point's params and label)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


@dataclass
class StudyResult:
    """One study at the end of the session."""

    study: str
    spec: StudySpec
    points: list[StudyPoint]
    size: int
    path: Path
    choice: Choice | None = None
    #: Why no point was chosen (incomplete study, no feasible point), or None.
    problem: str | None = None
    #: The point stored for this hardware class (None: none stored) and the sentence saying it changed.
    stored: dict[str, Any] | None = None
    change: str | None = None
    #: A failure of the study as a whole (no feasible point, a changed choice with ``fail_on_change``, strict).
    failure: str | None = None
    notes: list[str] = field(default_factory=list)
    #: PNG files drawn for it (``reports/study_report.py``), relative to the report.
    figures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        choice = self.choice
        return {
            "study": self.study, "rule": self.spec.to_json(), "size": self.size,
            "points": [{"test": p.test, "params": p.params, "status": p.status, "metrics": p.metrics,
                        "stderr": p.stderr} for p in self.points],
            "chosen": None if choice is None else choice.chosen.params,
            "runner_up": None if choice is None or choice.runner_up is None else choice.runner_up.params,
            "explanation": None if choice is None else choice.explanation,
            "excluded": {} if choice is None else choice.excluded,
            "problem": self.problem, "stored": self.stored, "change": self.change, "failure": self.failure,
            "notes": self.notes, "figures": self.figures,
        }


def gather(outcomes: Sequence[CheckOutcome]) -> dict[str, tuple[StudySpec, int, list[StudyPoint]]]:
    """``study id -> (spec, number of points, measured points)`` from the outcomes that belong to a study."""
    studies: dict[str, tuple[StudySpec, int, list[StudyPoint]]] = {}
    for outcome in outcomes:
        info = outcome.study
        if not info:
            continue
        spec = parse_study(info["rule"], info["study"])
        point = StudyPoint(outcome.test, dict(info["params"]), dict(info["indices"]), dict(outcome.measured),
                           dict(outcome.stderr), outcome.status.value, dict(outcome.fingerprint),
                           {name: list(values) for name, values in outcome.all_samples.items()})
        entry = studies.setdefault(info["study"], (spec, int(info["size"]), []))
        entry[2].append(point)
    return studies


def judge_studies(outcomes: Sequence[CheckOutcome], baseline_dir: Path, *, update: bool, strict: bool
                  ) -> list[StudyResult]:
    """Every study of the session judged: choice, comparison with the stored choice, or (``update``) its record."""
    results = []
    for study, (spec, size, points) in sorted(gather(outcomes).items()):
        result = StudyResult(study, spec, in_axis_order(points, spec.axis), size, study_path(baseline_dir, study))
        _judge(result, update=update, strict=strict)
        results.append(result)
    return results


def judge_session(session: LlmperfSession) -> bool:
    """Judge the session's studies into ``session.studies``; True when one of them failed."""
    session.studies = judge_studies(session.outcomes, session.baseline_dir, update=session.update,
                                    strict=session.strict)
    return any(study.failure for study in session.studies)


def _judge(result: StudyResult, *, update: bool, strict: bool) -> None:
    if len(result.points) < result.size:
        result.problem = (f"{len(result.points)} of {result.size} points measured: run the whole study to choose an "
                          "operating point")
        return
    try:
        result.choice = choose(result.spec, result.points)
    except NoOperatingPoint as error:
        result.problem = str(error)
        result.failure = f"{result.study}: {error}"
        return
    chosen = result.choice.chosen
    hardware = hardware_class(chosen.fingerprint) or ""
    try:
        stored = load_choice(result.path, hardware, result.study)
    except BaselineError as error:
        result.failure = str(error)
        return
    result.stored = None if stored is None else stored.get("point")
    if update:
        unwritten = [p.test for p in result.points if p.status not in ("updated", "passed")]
        if unwritten:
            result.notes.append(f"operating point not recorded: {len(unwritten)} points did not pass")
            return
        try:
            store_choice(result.path, result.study, hardware, result.spec, result.choice)
        except BaselineError as error:
            result.failure = str(error)
            return
        result.notes.append(f"operating point {chosen.label} recorded in {result.path.name}")
        return
    if stored is None:
        message = (f"no operating point is stored for this hardware: record it with "
                   f"{accept_command(result.study)}")
        result.notes.append(message)
        if strict:
            result.failure = f"[strict] {result.study}: {message}"
        return
    if stored.get("point") != chosen.params:
        was = ", ".join(f"{name}={value}" for name, value in (stored.get("point") or {}).items())
        changes = diff(stored.get("fingerprint") or {}, _versions_and_hardware(chosen.fingerprint))
        why = f"; what changed since it was chosen: {'; '.join(changes)}" if changes else \
            "; nothing in the fingerprint changed (the measurements moved)"
        result.change = f"operating point changed: {was} -> {chosen.label}{why}"
        if result.spec.fail_on_change:
            result.failure = (f"{result.study}: {result.change} (fail_on_change=True; accept it with "
                              f"{accept_command(result.study)})")


def _versions_and_hardware(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """What a stored choice keeps of its point's fingerprint: what a library upgrade or a new machine changes."""
    return {key: fingerprint[key] for key in ("versions", "hardware") if key in fingerprint}


def load_choice(path: Path, hardware: str, study: str | None = None) -> dict[str, Any] | None:
    """The stored choice of ``hardware`` in the study file at ``path`` (None: no file or no entry for it).

    A file that is not a study file (of ``study``, when given), or an entry of ``hardware`` of the wrong shape,
    raises a BaselineError naming the file and what is wrong: it is neither read as "nothing stored" nor
    replaced by ``--update-baselines``. Other hardware's entries are not this machine's to judge.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise BaselineError(f"{path}: cannot read the study's stored operating point ({error}); fix it, or delete "
                            "it and run `pytest -m perf --update-baselines`") from None
    document = _study_document(data, path, study)
    return _entry(document["choices"], path, hardware, study or str(document.get("study")))


def _study_document(data: object, path: Path, study: str | None) -> dict[str, Any]:
    """``data`` if it is a study file (of ``study``) that ``store_choice`` can update without losing anything:
    checked against ``schemas/study.schema.json`` (the file's keys; the entries are checked one at a time)."""
    found = schemas.problem(data, "study", "file")
    if found is not None:
        raise BaselineError(f"{path}: not a schema-{STUDY_SCHEMA} study file ({found}); it was not overwritten: "
                            "fix it, or delete it and run `pytest -m perf --update-baselines`")
    assert isinstance(data, dict)
    if study is not None and data.get("study") != study:
        raise BaselineError(f"{path}: holds study {data.get('study')!r}, not {study!r}; it was not overwritten: "
                            "move it if the study was renamed")
    return data


def _entry(choices: Mapping[str, Any], path: Path, hardware: str, study: str) -> dict[str, Any] | None:
    """The entry of ``hardware`` in ``choices``, checked against the study schema's ``choice``."""
    if hardware not in choices:
        return None
    entry = choices[hardware]
    found = schemas.problem(entry, "study", "choice", ("choices", hardware))
    if found is not None:
        raise BaselineError(f"{path}: the entry of hardware class {hardware!r} {found}; it was not overwritten: "
                            f"fix it, or delete that entry and run {accept_command(study)}")
    assert isinstance(entry, dict)
    return entry


def store_choice(path: Path, study: str, hardware: str, spec: StudySpec, choice: Choice) -> None:
    """Write ``choice`` as ``hardware``'s entry of the study file, keeping other hardware's entries; atomic, under
    the baseline directory's lock (the one baseline writes take)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with machine_lock(f"baselines:{path.parent.resolve()}"):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                document = {"schema": STUDY_SCHEMA, "study": study, "choices": {}}
            except ValueError as error:
                raise BaselineError(f"{path}: malformed JSON ({error}); not overwritten: fix it or delete it") from None
            # Read again under the lock: another worker may have written it since ``load_choice``.
            document = _study_document(document, path, study)
            _entry(document["choices"], path, hardware, study)
            document["choices"][hardware] = {
                "point": choice.chosen.params, "rule": spec.describe(), "explanation": choice.explanation,
                "fingerprint": _versions_and_hardware(choice.chosen.fingerprint),
            }
            write_atomically(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    except OSError as error:
        raise BaselineError(f"{path}: cannot write the study's operating point ({error.strerror or error})") from None
