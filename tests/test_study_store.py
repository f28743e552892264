"""The study file (``<test function>.study.json``, ``core/session_studies.py``): an entry of the wrong shape is a
clear error naming the file, in a check run and under ``--update-baselines`` alike, and is never overwritten."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.core.baseline import study_path
from pytest_llmperf.core.outcome import CheckOutcome, Status
from pytest_llmperf.core.session_studies import StudyResult, judge_studies

STUDY = "perf_tests/test_s.py::test_kv"
RULE = {"axis": "type_k", "minimise": "rss_peak_gib"}
FINGERPRINT = {"hardware": {"class": "cpu-test"}, "versions": {"llama-cpp-python": "0.3.36"}}


def outcomes(status: Status = Status.PASSED) -> list[CheckOutcome]:
    made = []
    for index, (type_k, rss) in enumerate([("f16", 0.03), ("q8_0", 0.02)]):
        outcome = CheckOutcome(f"{STUDY}[{type_k}]", Path("x.json"), status)
        outcome.measured = {"rss_peak_gib": rss}
        outcome.fingerprint = FINGERPRINT
        outcome.study = {"study": STUDY, "rule": RULE, "size": 2, "params": {"type_k": type_k},
                         "indices": {"type_k": index}}
        made.append(outcome)
    return made


def judged(baseline_dir: Path, *, update: bool) -> StudyResult:
    (result,) = judge_studies(outcomes(Status.UPDATED if update else Status.PASSED), baseline_dir, update=update,
                              strict=False)
    return result


def write(baseline_dir: Path, document: Any) -> Path:
    path = study_path(baseline_dir, STUDY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def test_a_good_entry_is_compared_and_updated(tmp_path: Path) -> None:
    path = write(tmp_path, {"schema": 1, "study": STUDY, "choices": {"cpu-test": {"point": {"type_k": "f16"}}}})
    result = judged(tmp_path, update=False)
    assert result.failure is None and result.stored == {"type_k": "f16"}
    assert result.change is not None and result.change.startswith("operating point changed: type_k=f16 -> type_k=q8_0")
    assert judged(tmp_path, update=True).failure is None
    assert json.loads(path.read_text())["choices"]["cpu-test"]["point"] == {"type_k": "q8_0"}


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (["type_k", "f16"], "the entry of hardware class 'cpu-test' at choices['cpu-test']: ['type_k', 'f16'] is "
                            "not of type 'object' (expected an object with a 'point')"),
        ({"point": "f16"}, "the entry of hardware class 'cpu-test' at choices['cpu-test'].point: 'f16' is not of "
                           "type 'object' (expected an object of knob -> value)"),
        ({"point": ["f16"]}, "the entry of hardware class 'cpu-test' at choices['cpu-test'].point: ['f16'] is not "
                             "of type 'object'"),
        ({"point": {"k": [1]}}, "the entry of hardware class 'cpu-test' at choices['cpu-test'].point.k: [1] is not "
                                "of type 'string', 'number', 'boolean', 'null'"),
        ({"rule": "r"}, "the entry of hardware class 'cpu-test' at choices['cpu-test']: 'point' is a required "
                        "property"),
        ({"point": {"type_k": "f16"}, "fingerprint": []}, "the entry of hardware class 'cpu-test' at "
                                                          "choices['cpu-test'].fingerprint: [] is not of type "
                                                          "'object'"),
    ],
)
@pytest.mark.parametrize("update", [False, True])
def test_an_entry_of_the_wrong_type_is_an_error_naming_the_file_and_is_kept(
    tmp_path: Path, entry: Any, problem: str, update: bool
) -> None:
    path = write(tmp_path, {"schema": 1, "study": STUDY, "choices": {"cpu-test": entry}})
    before = path.read_text()
    result = judged(tmp_path, update=update)
    assert result.failure is not None
    assert result.failure.startswith(f"{path}: {problem}")
    assert "not overwritten" in result.failure
    assert result.notes == []  # nothing recorded
    assert path.read_text() == before


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ([{"type_k": "f16"}], "not a schema-1 study file"),
        ({"schema": 1, "study": STUDY, "choices": []}, "not a schema-1 study file"),
        ({"schema": 2, "study": STUDY, "choices": {}}, "not a schema-1 study file"),
        ({"schema": 1, "study": "other.py::test_y", "choices": {}}, "holds study 'other.py::test_y'"),
    ],
)
@pytest.mark.parametrize("update", [False, True])
def test_a_file_of_the_wrong_shape_is_an_error_naming_it_and_is_kept(
    tmp_path: Path, document: Any, problem: str, update: bool
) -> None:
    path = write(tmp_path, document)
    before = path.read_text()
    result = judged(tmp_path, update=update)
    assert result.failure is not None and result.failure.startswith(f"{path}: {problem}")
    assert path.read_text() == before


def test_another_machines_bad_entry_is_not_this_machines_problem(tmp_path: Path) -> None:
    path = write(tmp_path, {"schema": 1, "study": STUDY, "choices": {"gpu-other": "junk"}})
    result = judged(tmp_path, update=True)
    assert result.failure is None
    choices = json.loads(path.read_text())["choices"]
    assert choices["gpu-other"] == "junk" and choices["cpu-test"]["point"] == {"type_k": "q8_0"}
