"""Baseline files: safe paths, validation of every field, atomic writes."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmperf.core.baseline import (
    Baseline,
    BaselineFile,
    MetricRecord,
    baseline_path,
    load_baseline,
    parse_baseline,
    record_baseline,
)
from pytest_llmperf.errors import BaselineError


def test_path_follows_node_id(tmp_path: Path) -> None:
    path = baseline_path(tmp_path, "perf_tests/test_decode.py::test_speed[q4_k_m]")
    assert path == tmp_path / "perf_tests" / "test_decode" / "test_speed[q4_k_m].json"
    klass = baseline_path(tmp_path, "perf_tests/test_decode.py::TestX::test_speed")
    assert klass.name == "TestX.test_speed.json"


@pytest.mark.parametrize(
    "nodeid",
    ["../../etc/passwd.py::test_x", "/abs/test_a.py::test_x", "a/../../b.py::test_x[../../x]", "t.py::test[a/b\\c]"],
)
def test_path_never_escapes_the_directory(tmp_path: Path, nodeid: str) -> None:
    path = baseline_path(tmp_path, nodeid).resolve()
    assert tmp_path.resolve() in path.parents


def test_sanitised_ids_do_not_collide(tmp_path: Path) -> None:
    assert baseline_path(tmp_path, "t.py::test[a/b]") != baseline_path(tmp_path, "t.py::test[a_b]")


def _entry(hardware: str = "cpu:A:2", value: float = 100.0) -> Baseline:
    fingerprint = {"backend": "x", "hardware": {"class": hardware}}
    return Baseline("t.py::test", {"completion_tok_s": MetricRecord(value, [value - 1, value, value + 1])}, fingerprint)


def _baseline() -> BaselineFile:
    return BaselineFile("t.py::test", [_entry()])


def test_round_trip_is_sorted_and_pretty(tmp_path: Path) -> None:
    path = tmp_path / "b" / "t.json"
    record_baseline(path, _entry())
    text = path.read_text()
    assert text.startswith('{\n  "fingerprint"')  # sorted keys, indented
    data = json.loads(text)
    assert data["schema"] == 1 and data["metrics"]["completion_tok_s"]["direction"] == "higher"
    loaded = load_baseline(path)
    assert loaded is not None and loaded.entries[0].metrics["completion_tok_s"].samples == [99.0, 100.0, 101.0]
    assert [p.name for p in path.parent.iterdir()] == ["t.json"]  # no temp file left behind


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    record_baseline(path, _entry())
    before = path.read_text()
    broken = _entry()
    broken.metrics["completion_tok_s"] = MetricRecord(float("nan"))
    with pytest.raises(BaselineError, match="not written: completion_tok_s is nan"):
        record_baseline(path, broken)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_hardware_classes_live_side_by_side_in_one_file(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    record_baseline(path, _entry("cpu:A:2", 100.0))
    record_baseline(path, _entry("gpu:H100x1", 900.0))
    record_baseline(path, _entry("cpu:A:2", 110.0))  # re-recording one class keeps the other
    data = json.loads(path.read_text())
    assert data["metrics"]["completion_tok_s"]["value"] == 110.0  # the first class stays at the top level
    assert list(data["other_hardware"]) == ["gpu:H100x1"]
    loaded = load_baseline(path)
    assert loaded is not None and loaded.hardware_classes == ["cpu:A:2", "gpu:H100x1"]
    entry = loaded.for_hardware("gpu:H100x1")
    assert entry is not None and entry.metrics["completion_tok_s"].value == 900.0
    assert loaded.for_hardware("cpu:B:8") is None


def test_entry_without_hardware_class_round_trips_beside_others(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    record_baseline(path, _entry("cpu:A:2"))
    unclassed = Baseline("t.py::test", {"completion_tok_s": MetricRecord(5.0)}, {"backend": "x"})
    record_baseline(path, unclassed)
    loaded = load_baseline(path)
    assert loaded is not None and loaded.hardware_classes == ["cpu:A:2", None]
    assert loaded.for_hardware("cpu:B:8") == unclassed  # a hand-written entry stands in for any machine


def test_record_refuses_a_malformed_file(tmp_path: Path) -> None:
    # It may hold other machines' entries (a merge conflict): rewriting it would lose them.
    path = tmp_path / "t.json"
    path.write_text("{not json")
    with pytest.raises(BaselineError, match=r"malformed JSON.*would lose the rest of the file"):
        record_baseline(path, _entry())
    assert path.read_text() == "{not json"


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert load_baseline(tmp_path / "absent.json") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": 1, "test": "t", "metrics": {', "malformed JSON at line 1"),
        ("[]", "at the top level: [] is not of type 'object' (expected a baseline file"),
        ('{"schema": 7, "test": "t", "metrics": {}}', "schema 7 is not supported"),
        ('{"schema": 1, "test": "t", "metrics": {"speed": {"value": 1}}}', "unknown metric 'speed'"),
        ('{"schema": 1, "test": "t", "metrics": {"e2e_p99": {"value": "fast"}}}',
         "at metrics.e2e_p99.value: 'fast' is not of type 'number' (expected the headline value"),
        ('{"schema": 1, "test": "t", "metrics": {"e2e_p99": {"value": NaN}}}', "a finite number is required"),
        ('{"schema": 1, "test": "t", "metrics": {"e2e_p99": {"value": -1}}}', "cannot be negative"),
        ('{"schema": 1, "test": "t", "metrics": {"e2e_p99": {"value": 1, "samples": [1, null]}}}',
         "at metrics.e2e_p99.samples[1]: None is not of type 'number'"),
        ('{"schema": 1, "metrics": {}}', "at the top level: 'test' is a required property"),
        ('{"schema": 1, "test": "t", "metrics": {}, "other_hardware": []}',
         "at other_hardware: [] is not of type 'object'"),
        (
            '{"schema": 1, "test": "t", "metrics": {}, "other_hardware": {"gpu:X": {"metrics": {}}}}',
            "(other_hardware['gpu:X']): its fingerprint's hardware.class is None",
        ),
        (
            '{"schema": 1, "test": "t", "metrics": {}, "other_hardware": {"gpu:X": '
            '{"metrics": {"e2e_p99": {"value": -2}}, "fingerprint": {"hardware": {"class": "gpu:X"}}}}}',
            "(other_hardware['gpu:X']): metric 'e2e_p99' cannot be negative",
        ),
        (
            '{"schema": 1, "test": "t", "metrics": {}, "other_hardware": {"gpu:X": '
            '{"metrics": {"e2e_p99": {"value": 1, "machine_speeds": [0]}}}}}',
            "at other_hardware['gpu:X'].metrics.e2e_p99.machine_speeds[0]: 0 is less than or equal to the minimum of 0",
        ),
        (
            '{"schema": 1, "test": "t", "metrics": {}, "fingerprint": {"hardware": {"class": "gpu:X"}}, '
            '"other_hardware": {"gpu:X": {"metrics": {}, "fingerprint": {"hardware": {"class": "gpu:X"}}}}}',
            "hardware class gpu:X is stored twice",
        ),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(BaselineError) as error:
        loaded = load_baseline(path)
        # A problem inside one hardware class's entry is raised when that entry is used.
        assert loaded is not None
        for hardware in loaded.hardware_classes:
            loaded.for_hardware(hardware)
    assert str(path) in str(error.value)
    assert message in str(error.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"schema": st.just(1), "test": json_values, "metrics": json_values},
            optional={"fingerprint": json_values, "workload": json_values, "other_hardware": json_values},
        ),
        st.fixed_dictionaries(
            {
                "schema": st.just(1),
                "test": st.just("t"),
                "metrics": st.dictionaries(
                    st.sampled_from(["e2e_p99", "completion_tok_s", "x", "a.acc"]),
                    st.fixed_dictionaries({"value": json_values}, optional={"samples": json_values}),
                ),
            }
        ),
        # Files that load: known metrics with finite non-negative values (what must come back unchanged).
        st.fixed_dictionaries(
            {
                "schema": st.just(1),
                "test": st.just("t"),
                "metrics": st.dictionaries(
                    st.sampled_from(["e2e_p99", "completion_tok_s", "a.acc"]),
                    st.fixed_dictionaries({"value": st.floats(min_value=0, max_value=1e6)}),
                    min_size=1,
                ),
            }
        ),
    )
)
def test_loader_fuzz_only_raises_baseline_errors(data: object) -> None:
    """Any JSON either loads into what it says or is refused with a BaselineError (never another exception):
    what loads keeps each metric's value exactly, a finite number, under the test name the file gives."""
    try:
        loaded = parse_baseline(data, Path("fuzz.json"))
    except BaselineError as error:
        assert "fuzz.json" in str(error)
        return
    assert isinstance(data, dict)
    for position, hardware in enumerate(loaded.hardware_classes):
        try:
            entry = loaded.for_hardware(hardware)
        except BaselineError as error:  # an unreadable entry of another class is named when asked for
            assert "fuzz.json" in str(error)
            continue
        assert entry is not None and entry.test == data["test"]
        source = data["metrics"] if position == 0 else None
        for name, record in entry.metrics.items():
            assert isinstance(record.value, float | int) and math.isfinite(record.value), (name, record.value)
            if source is not None:
                assert record.value == source[name]["value"]


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_new_baseline_gets_the_mode_the_umask_gives_a_new_file(tmp_path: Path) -> None:
    for umask, expected in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        path = tmp_path / f"u{umask:o}" / "t.json"
        path.parent.mkdir()
        previous = os.umask(umask)
        try:
            record_baseline(path, _entry())
        finally:
            os.umask(previous)
        assert stat.S_IMODE(path.stat().st_mode) == expected, f"umask {umask:o}"


def test_a_rewritten_baseline_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    for mode in (0o644, 0o640, 0o664):
        path = tmp_path / f"m{mode:o}.json"
        record_baseline(path, _entry(value=100.0))
        path.chmod(mode)
        record_baseline(path, _entry(value=90.0))
        assert json.loads(path.read_text())["metrics"]["completion_tok_s"]["value"] == 90.0
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{mode:o}"


def test_a_study_file_gets_the_umask_mode_and_keeps_an_existing_one(tmp_path: Path, umask_022: None) -> None:
    from pytest_llmperf.core.operating_point import Choice, StudyPoint, StudySpec
    from pytest_llmperf.core.session_studies import store_choice

    point = StudyPoint("t.py::test_s[1]", {"n_batch": 1}, {"n_batch": 0}, {"completion_tok_s": 10.0})
    choice = Choice(point, None, "the only point", [point.test], {})
    spec = StudySpec(("n_batch",), "completion_tok_s", True)
    path = tmp_path / "t.py" / "test_s.study.json"
    store_choice(path, "t.py::test_s", "cpu:A:2", spec, choice)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    path.chmod(0o640)
    store_choice(path, "t.py::test_s", "cpu:B:4", spec, choice)
    assert set(json.loads(path.read_text())["choices"]) == {"cpu:A:2", "cpu:B:4"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
