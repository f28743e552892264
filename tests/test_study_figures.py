"""A study's figures (``reports/study_report.draw_study``) drawn from known points, without pytest runs: the
objective drawn whatever metric it is, the chosen point marked, the Pareto front on the objective against what
the rule trades it with, memory axes from 0, and error bars from each point's repetitions (accuracy: stderr)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.core.operating_point import StudyPoint, choose, parse_study
from pytest_llmperf.core.session_studies import StudyResult
from pytest_llmperf.reports.study_report import draw_study, tradeoff_metric

pytest.importorskip("matplotlib")

MIB = 1 / 1024
#: n_ubatch -> repetitions of prompt tok/s, completion tok/s, e2e p99 (s) and host RSS (GiB): the prompt rate grows
#: with the micro-batch, p99 latency too (512 breaks the 0.25 s bound), memory moves by a few MiB.
REPETITIONS = {
    8: ([880, 900, 905, 920, 950], [2350, 2400, 2410], [0.118, 0.12, 0.125], [82 * MIB, 82.2 * MIB]),
    32: ([2500, 2650, 2700, 2720, 2800], [2420, 2450, 2500], [0.150, 0.155, 0.170], [84 * MIB, 84.1 * MIB]),
    128: ([3900, 4000, 4050, 4100, 4120], [2300, 2380, 2400], [0.200, 0.220, 0.224], [86 * MIB, 86.4 * MIB]),
    512: ([4200, 4250, 4300, 4400, 4500], [2250, 2300, 2310], [0.300, 0.310, 0.340], [90 * MIB, 90.1 * MIB]),
}
NAMES = ("prompt_tok_s", "completion_tok_s", "e2e_p99", "rss_peak_gib")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def study(rule: dict[str, Any], accuracy: dict[int, float] | None = None) -> tuple[StudyResult, dict[str, Any]]:
    """The n_ubatch study under ``rule``, judged, and the samples of each point (test id -> metric -> values)."""
    spec = parse_study({"axis": "n_ubatch", **rule}, "t.py::test_ubatch")
    points, samples = [], {}
    for index, (n, repetitions) in enumerate(REPETITIONS.items()):
        test = f"t.py::test_ubatch[{n}]"
        metrics: dict[str, float | None] = {name: median(list(v)) for name, v in zip(NAMES, repetitions, strict=True)}
        stderr: dict[str, float | None] = {}
        if accuracy is not None:
            metrics["task.acc"], stderr["task.acc"] = accuracy[n], 0.02
        points.append(StudyPoint(test, {"n_ubatch": n}, {"n_ubatch": index}, metrics, stderr))
        samples[test] = {name: list(v) for name, v in zip(NAMES, repetitions, strict=True)}
    result = StudyResult("t.py::test_ubatch", spec, points, len(points), Path("unused.study.json"))
    result.choice = choose(spec, points)
    return result, samples


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every figure draw_study saves, by kind."""
    from pytest_llmperf.reports import figures

    saved: dict[str, Any] = {}
    save = figures.save

    def saving(fig: Any, path: Path) -> Path:
        saved[path.stem.rsplit("-", 1)[-1]] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "save", saving)
    return saved


def lines(ax: Any) -> dict[str, list[float]]:
    return {line.get_label(): [float(y) for y in line.get_ydata()] for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def legend_texts(ax: Any) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def stars(ax: Any) -> list[tuple[float, float]]:
    """The chosen point's markers: the scatters drawn with a star."""
    return [tuple(float(v) for v in offset) for collection in ax.collections
            if collection.get_paths() and len(collection.get_paths()[0].vertices) == 11  # a 5-pointed star, closed
            for offset in collection.get_offsets()]


def error_bars(ax: Any) -> list[float]:
    """The bottom and top of every vertical error bar on the axes, in drawing order, flat (for pytest.approx)."""
    from matplotlib.collections import LineCollection

    return [float(end) for collection in ax.collections if isinstance(collection, LineCollection)
            for seg in collection.get_segments() if seg[0, 0] == seg[1, 0] for end in sorted(seg[:, 1])]


def bounds(pairs: Any) -> list[float]:
    return [float(value) for pair in pairs for value in pair]


def test_the_objective_is_drawn_first_whatever_it_is(tmp_path: Path, drawn: dict[str, Any]) -> None:
    result, samples = study({"maximise": "prompt_tok_s", "constraints": ["e2e_p99 <= 0.25"]})
    draw_study(result, tmp_path, samples)
    assert list(drawn) == ["objective", "memory", "speed", "pareto"]
    prompt = [median(r[0]) for r in REPETITIONS.values()]
    objective, constraint = drawn["objective"].axes
    assert objective.get_title() == "Objective: maximise prompt_tok_s vs n_ubatch"
    assert lines(objective) == {"prompt_tok_s (objective)": pytest.approx(prompt)}
    assert constraint.get_title() == "Constraint: e2e_p99 <= 0.25 s"
    assert "bound: <= 250 ms" in legend_texts(constraint)
    # 512 breaks the bound: crossed out on both panels.
    assert "excluded by the rule" in legend_texts(objective) and "breaks the constraint" in legend_texts(constraint)
    throughput, _ = drawn["speed"].axes
    # The objective first (and thicker), then the usual throughputs.
    assert list(lines(throughput)) == ["prompt_tok_s (objective)", "completion_tok_s"]
    widths = [line.get_linewidth() for line in throughput.get_lines() if not line.get_label().startswith("_")]
    assert widths[0] > widths[1]


def test_the_chosen_point_is_marked_on_the_speed_and_memory_figures(tmp_path: Path, drawn: dict[str, Any]) -> None:
    result, samples = study({"maximise": "prompt_tok_s", "constraints": ["e2e_p99 <= 0.25"]})
    assert result.choice is not None
    chosen = [point.test for point in result.points].index(result.choice.chosen.test)
    draw_study(result, tmp_path, samples)
    (memory,) = drawn["memory"].axes
    throughput, latency = drawn["speed"].axes
    for ax in (memory, throughput, latency):
        assert "chosen" in [text.get_text() for text in ax.texts]
        assert [label.get_fontweight() for label in ax.get_xticklabels()][chosen] == "bold"
        assert "chosen point" in legend_texts(ax)
        assert {x for x, _ in stars(ax)} == {chosen}
    assert stars(memory) == [(chosen, pytest.approx(median(REPETITIONS[32][3]) * 1024))]


def test_memory_axes_start_at_zero(tmp_path: Path, drawn: dict[str, Any]) -> None:
    """82-90 MiB is no cliff: the memory figure, and the Pareto front when memory is its other axis, from 0."""
    result, samples = study({"maximise": "prompt_tok_s"})
    draw_study(result, tmp_path, samples)
    (memory,) = drawn["memory"].axes
    assert memory.get_ylabel() == "memory (MiB)" and memory.get_ylim()[0] == 0
    (pareto,) = drawn["pareto"].axes
    # No constraint: the objective against memory (then latency, then throughput).
    assert pareto.get_title() == "Pareto front: prompt_tok_s vs rss_peak_gib"
    assert pareto.get_ylim()[0] == 0 and pareto.get_xlim()[0] > 0


def test_the_pareto_front_sets_the_objective_against_what_the_rule_trades_it_with(
    tmp_path: Path, drawn: dict[str, Any]
) -> None:
    result, samples = study({"maximise": "prompt_tok_s", "constraints": ["e2e_p99 <= 0.25"]})
    assert tradeoff_metric(result) == "e2e_p99"
    draw_study(result, tmp_path, samples)
    (pareto,) = drawn["pareto"].axes
    assert pareto.get_title() == "Pareto front: prompt_tok_s vs e2e_p99"
    assert (pareto.get_xlabel(), pareto.get_ylabel()) == ("prompt_tok_s (tok/s) (higher is better, objective)",
                                                          "e2e_p99 (ms) (lower is better)")
    texts = [text.get_text() for text in pareto.texts]
    assert texts == ["8", "32 (chosen)", "128", "512"]
    assert "excluded by the rule" in legend_texts(pareto)
    # Memory minimised: traded against latency when the rule names no constraint.
    minimised, _ = study({"minimise": "rss_peak_gib"})
    assert tradeoff_metric(minimised) == "e2e_p99"


def test_error_bars_are_the_interquartile_range_of_the_repetitions(tmp_path: Path, drawn: dict[str, Any]) -> None:
    import statistics

    result, samples = study({"maximise": "prompt_tok_s", "constraints": ["e2e_p99 <= 0.25"]})
    draw_study(result, tmp_path, samples)
    objective = drawn["objective"].axes[0]
    quartiles = [statistics.quantiles(r[0], n=4, method="inclusive") for r in REPETITIONS.values()]
    assert error_bars(objective) == pytest.approx(bounds((q[0], q[2]) for q in quartiles))
    assert "error bars: IQR of the repetitions" in legend_texts(objective)
    # Without the samples there is nothing to draw them from: no bars, and the legend does not claim any.
    drawn.clear()
    draw_study(result, tmp_path)
    objective = drawn["objective"].axes[0]
    assert error_bars(objective) == [] and "error bars: IQR of the repetitions" not in legend_texts(objective)


def test_accuracy_error_bars_are_its_stderr(tmp_path: Path, drawn: dict[str, Any]) -> None:
    accuracy = {8: 0.70, 32: 0.71, 128: 0.70, 512: 0.64}
    result, samples = study({"maximise": "prompt_tok_s", "accuracy_within": 1}, accuracy)
    draw_study(result, tmp_path, samples)
    (tradeoff,) = drawn["memory_vs_accuracy"].axes
    assert tradeoff.get_xlim()[0] == 0  # memory from 0
    assert error_bars(tradeoff) == pytest.approx(bounds((a - 0.02, a + 0.02) for a in accuracy.values()))
    assert "error bars: ± stderr" in legend_texts(tradeoff)
    # A task's stderr on the objective figure when the objective is the score itself.
    drawn.clear()
    scored, _ = study({"maximise": "task.acc"}, accuracy)
    draw_study(scored, tmp_path)
    objective = drawn["objective"].axes[0]
    assert lines(objective) == {"task.acc (objective)": pytest.approx(list(accuracy.values()))}
    assert error_bars(objective) == pytest.approx(bounds((a - 0.02, a + 0.02) for a in accuracy.values()))


def test_a_bound_far_above_the_points_is_named_not_drawn(tmp_path: Path, drawn: dict[str, Any]) -> None:
    """``rss_peak_gib <= 4`` (GiB) over 82-90 MiB: a line at 4096 MiB would flatten the points into one at 0."""
    result, samples = study({"maximise": "prompt_tok_s", "constraints": ["rss_peak_gib <= 4", "e2e_p99 <= 0.25"]})
    draw_study(result, tmp_path, samples)
    _, memory, latency = drawn["objective"].axes
    assert "bound: <= 4096 MiB (far above)" in legend_texts(memory)
    assert memory.get_ylim()[1] < 120  # MiB: the points' range, from 0
    assert "bound: <= 250 ms" in legend_texts(latency)  # near the points: drawn
    assert [line.get_ydata()[0] for line in latency.get_lines() if line.get_label() == "bound: <= 250 ms"] == [250]


def test_a_gathered_point_carries_its_repetitions_for_the_error_bars(tmp_path: Path) -> None:
    """``gather`` keeps each point's samples (the IQR bars of a real session's figures come from them)."""
    from pytest_llmperf.core.outcome import CheckOutcome, Status
    from pytest_llmperf.core.session_studies import gather, point_info

    rule = {"axis": ["n_batch"], "maximise": "completion_tok_s"}
    outcome = CheckOutcome("t.py::test_s[8]", tmp_path / "b.json", Status.PASSED, [], [], [])
    outcome.study = point_info("t.py::test_s[8]", rule, {"n_batch": 8}, {"n_batch": 0}, 1)
    outcome.measured = {"completion_tok_s": 10.0}
    outcome.all_samples = {"completion_tok_s": [9.0, 10.0, 12.0]}
    (point,) = gather([outcome])["t.py::test_s"][2]
    assert point.samples == {"completion_tok_s": [9.0, 10.0, 12.0]}
