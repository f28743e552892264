"""The operating-point rule of a study (``core/operating_point.py``): constraints, plateau preference, ties, no feasible
point, accuracy within k stderr, and the marker's validation."""

from __future__ import annotations

import pytest

from pytest_llmperf.core.operating_point import NoOperatingPoint, StudyPoint, choose, parse_study
from pytest_llmperf.errors import LlmperfError


def points(axis: str, values: list[object], **metrics: list[float | None]) -> list[StudyPoint]:
    return [
        StudyPoint(f"t.py::test[{value}]", {axis: value}, {axis: index},
                   {name: column[index] for name, column in metrics.items()})
        for index, value in enumerate(values)
    ]


def test_a_constraint_excludes_the_throughput_best_point_and_is_named_as_binding() -> None:
    spec = parse_study({"axis": "max_num_seqs", "maximise": "completion_tok_s",
                        "constraints": ["mem_max_gib <= 75"], "plateau": False}, "t")
    study = points("max_num_seqs", [64, 128, 192, 224], completion_tok_s=[100.0, 150.0, 170.0, 180.0],
                   mem_max_gib=[60.0, 65.0, 72.0, 80.0])
    choice = choose(spec, study)
    assert choice.chosen.params == {"max_num_seqs": 192}
    assert choice.runner_up is not None and choice.runner_up.params == {"max_num_seqs": 128}
    assert choice.excluded == {"t.py::test[224]": ["mem_max_gib 80 GiB (needs <= 75 GiB)"]}
    assert choice.explanation.startswith(
        "max_num_seqs=192: highest completion_tok_s (170.0 tok/s) among points meeting mem_max_gib <= 75 GiB")
    assert "the completion_tok_s-best point 224 is excluded: mem_max_gib 80 GiB (needs <= 75 GiB) (the binding " \
        "constraint)" in choice.explanation
    assert "runner-up 128 (-11.8% completion_tok_s)" in choice.explanation
    assert "; mem_max_gib 72 GiB;" in choice.explanation


def test_an_isolated_peak_and_an_endpoint_lose_to_a_plateau_point() -> None:
    spec = parse_study({"axis": "n", "maximise": "completion_tok_s", "constraints": ["e2e_p99 <= 1.0"]}, "t")
    study = points("n", [1, 2, 3, 4, 5, 6, 7], completion_tok_s=[100.0, 50.0, 400.0, 60.0, 150.0, 200.0, 250.0],
                   e2e_p99=[0.5, 2.0, 0.5, 2.0, 0.5, 0.5, 0.5])
    choice = choose(spec, study)
    # 3 is the best (400) but both its neighbours fail the SLO; 7 (250) is an endpoint; 6's neighbours pass.
    assert choice.chosen.params == {"n": 6}
    assert choice.runner_up is not None and choice.runner_up.params == {"n": 3}
    assert "the completion_tok_s-best point 3 (400.0 tok/s) meets the constraints but is an isolated peak (its " \
        "neighbour 2 fails: e2e_p99 2 s (needs <= 1 s)), so the plateau point is preferred" in choice.explanation
    assert "plateau of supported points: 6" in choice.explanation
    assert "runner-up 3 (+100.0% completion_tok_s)" in choice.explanation


def test_without_plateau_preference_the_peak_wins() -> None:
    spec = parse_study({"axis": "n", "maximise": "completion_tok_s", "constraints": ["e2e_p99 <= 1.0"],
                        "plateau": False}, "t")
    study = points("n", [1, 2, 3, 4], completion_tok_s=[100.0, 50.0, 400.0, 60.0], e2e_p99=[0.5, 2.0, 0.5, 2.0])
    assert choose(spec, study).chosen.params == {"n": 3}


def test_ties_go_to_less_memory_then_to_the_earlier_value() -> None:
    spec = parse_study({"axis": "n", "maximise": "completion_tok_s"}, "t")
    study = points("n", [1, 2, 3, 4, 5], completion_tok_s=[100.0, 200.0, 201.0, 200.5, 100.0],
                   rss_peak_gib=[1.0, 1.2, 2.0, 1.8, 1.0])
    choice = choose(spec, study)
    assert choice.chosen.params == {"n": 2}
    assert "tied with 3, 4 on completion_tok_s (within 1%); chosen for less rss_peak_gib (1.2 GiB)" in \
        choice.explanation
    same_memory = points("n", [1, 2, 3, 4, 5], completion_tok_s=[100.0, 200.0, 200.0, 200.0, 100.0],
                         rss_peak_gib=[1.0, 1.5, 1.5, 1.5, 1.0])
    tied = choose(spec, same_memory)
    assert tied.chosen.params == {"n": 2}
    assert "chosen for the earlier axis value" in tied.explanation
    # Outside the tie margin the higher throughput wins, whatever its memory.
    strict_tie = parse_study({"axis": "n", "maximise": "completion_tok_s", "tie": 0.0}, "t")
    assert choose(strict_tie, study).chosen.params == {"n": 3}


def test_no_point_meeting_the_constraints_is_a_clear_error() -> None:
    spec = parse_study({"axis": "type_k", "minimise": "rss_peak_gib", "constraints": ["completion_tok_s >= 500"]},
                       "t")
    study = points("type_k", ["f16", "q8_0"], completion_tok_s=[300.0, None], rss_peak_gib=[0.02, 0.01])
    with pytest.raises(NoOperatingPoint) as raised:
        choose(spec, study)
    assert str(raised.value) == (
        "no point meets the constraints (minimise rss_peak_gib; completion_tok_s >= 500.0 tok/s): "
        "f16: completion_tok_s 300.0 tok/s (needs >= 500.0 tok/s); q8_0: completion_tok_s unavailable"
    )


def test_accuracy_within_k_stderr_of_the_best_on_every_task() -> None:
    spec = parse_study({"axis": "type_k", "minimise": "rss_peak_gib", "accuracy_within": 1}, "t")
    study = points("type_k", ["f16", "q8_0", "q4_0"], rss_peak_gib=[0.03, 0.02, 0.01],
                   **{"task.acc": [0.90, 0.89, 0.70]})
    for point in study:
        point.stderr["task.acc"] = 0.02
    choice = choose(spec, study)
    # q4_0 uses the least memory but is 7.1 stderr (of the difference) below f16; q8_0 is 0.35 below.
    assert choice.chosen.params == {"type_k": "q8_0"}
    assert choice.excluded["t.py::test[q4_0]"] == [
        "task.acc 0.7 (7.1 stderr from the best, 0.9 at f16; allowed 1)"]
    assert "the axis is categorical: no plateau preference" in choice.explanation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maximise": "completion_tok_s"}, "perf_study(axis=...) must name the parametrized knob"),
        ({"axis": "n"}, "exactly one of maximise='metric' or minimise='metric'"),
        ({"axis": "n", "maximise": "completion_tok_s", "minimise": "e2e_p99"}, "exactly one of"),
        ({"axis": "n", "maximise": "completion_toks"}, "did you mean 'completion_tok_s'"),
        ({"axis": "n", "maximise": "completion_tok_s", "constraints": ["e2e_p99 < two"]},
         "constraint 'e2e_p99 < two' is not 'metric <= number'"),
        ({"axis": "n", "maximise": "completion_tok_s", "constraints": "e2e_p99 <= 1"}, "must be a list"),
        ({"axis": "n", "maximise": "completion_tok_s", "objective": "x"}, "unknown keywords ['objective']"),
        ({"axis": "n", "maximise": "completion_tok_s", "tie": 2}, "perf_study(tie=...) must be a fraction"),
    ],
)
def test_bad_study_markers_name_the_test_and_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(LlmperfError, match=r"^t.py::test_x: ") as raised:
        parse_study(kwargs, "t.py::test_x")
    assert message in str(raised.value)


def test_a_point_without_a_score_for_a_constrained_task_is_infeasible() -> None:
    spec = parse_study({"axis": "type_k", "minimise": "rss_peak_gib", "accuracy_within": 1}, "t")
    study = points("type_k", ["f16", "q8_0", "q4_0"], rss_peak_gib=[0.03, 0.02, 0.01],
                   **{"task.acc": [0.90, 0.89, None]})
    for point in study:
        point.stderr["task.acc"] = 0.02
    choice = choose(spec, study)
    # q4_0 uses the least memory, but nothing shows its accuracy is within 1 stderr of the best: not chosen.
    assert choice.chosen.params == {"type_k": "q8_0"}
    assert choice.excluded == {"t.py::test[q4_0]": ["no score for task.acc"]}
    # A task missing from the point's metrics altogether is the same.
    del study[2].metrics["task.acc"]
    assert choose(spec, study).excluded == {"t.py::test[q4_0]": ["no score for task.acc"]}
    # Without accuracy_within the rule does not constrain accuracy: q4_0 is chosen.
    free = parse_study({"axis": "type_k", "minimise": "rss_peak_gib"}, "t")
    assert choose(free, study).chosen.params == {"type_k": "q4_0"}


@pytest.mark.parametrize("within", [float("nan"), float("inf"), -1.0, "1", True])
def test_accuracy_within_must_be_a_finite_number_of_stderr(within: object) -> None:
    with pytest.raises(LlmperfError) as raised:
        parse_study({"axis": "n", "maximise": "completion_tok_s", "accuracy_within": within}, "t.py::test_x")
    assert str(raised.value).startswith("t.py::test_x: perf_study(accuracy_within=...) must be a finite number")
    assert f"got {within!r}" in str(raised.value)
