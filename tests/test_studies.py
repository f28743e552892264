"""Studies end to end through pytest: the points of a parametrized ``perf_study`` test form one study, judged at
the end of the session (serially and under xdist), with its table, figures, chosen point and stored choice; and
the vLLM study shape (max_num_seqs, NVML memory, accuracy per task) against the fake vLLM and fake NVML."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf.core import hardware
from tests import fake_vllm
from tests.fake_nvml import FakeGpu, make_pynvml

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STUDY = """
import pytest
from pytest_llmperf import Workload

@pytest.mark.perf
@pytest.mark.perf_study(axis="n_ubatch", maximise="completion_tok_s", constraints=["rss_peak_gib <= 4"]{extra})
@pytest.mark.parametrize("n_ubatch", [8, 32, 128])
def test_ubatch(engine_factory, llmperf, n_ubatch):
    engine = engine_factory("llama_cpp", n_ctx=256, n_ubatch=n_ubatch, n_batch=128)
    llmperf.measure(engine, Workload(n_prompt=16, n_predict=8, requests=2, warmup=1, repetitions=2,
                                     max_repetitions=2), gate=["engine_compute_gib", "engine_mem_gib"])
"""
# The points are gated on the buffers llama.cpp allocates (exact, tolerance 0; the compute buffer grows with
# n_ubatch), not on speed: on this shared 2-core VM tok/s swings 2x between runs, so a speed gate could be neither
# sure nor able to fail. The study still chooses on speed, judged as a whole.
ARGS = ("-m", "perf", "-p", "no:cacheprovider", "--llmperf-report", "out/report.json")


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Figure]:
    """Every figure the report layer saves, by kind (``memory``, ``pareto``...), as the Figure it drew.

    pytester's in-process runs drop the modules they imported; the figure modules and matplotlib's (one figure
    drawn and saved here) are imported before them, so every run uses these, the patched ``save`` included.
    """
    pytest.importorskip("matplotlib")
    # By sys.modules, not ``from pytest_llmperf.reports import figures``: an earlier pytester test may have dropped
    # the module from sys.modules while the package attribute still names the dropped copy.
    figures = importlib.import_module("pytest_llmperf.reports.figures")
    knob = importlib.import_module("pytest_llmperf.reports.figures.knob")
    for kind in ("accuracy", "tradeoff"):
        importlib.import_module(f"pytest_llmperf.reports.figures.{kind}")

    figures.save(knob.memory_vs_knob("n", ["1"], [figures.Series("rss_peak_gib", [0.5])]), tmp_path / "imports.png")

    saved: dict[str, Figure] = {}
    save = figures.save

    def saving(fig: Figure, path: Path) -> Path:
        saved[path.stem.rsplit("-", 1)[-1]] = fig
        return save(fig, path)

    monkeypatch.setattr(figures, "save", saving)
    return saved


def lines(ax: Any) -> dict[str, list[float]]:
    """The metrics' lines by legend label (not the chosen point's marker line or the error bars' caps)."""
    return {line.get_label(): [float(y) for y in line.get_ydata()] for line in ax.get_lines()
            if not line.get_label().startswith("_")}


def ticks(ax: Any) -> list[str]:
    return [label.get_text() for label in ax.get_xticklabels()]


def annotations(ax: Any) -> list[str]:
    return [text.get_text() for text in ax.texts]


def offsets(ax: Any) -> list[float]:
    """The first scatter's points, x0, y0, x1, y1, ... (pytest.approx compares flat sequences)."""
    return [float(value) for value in ax.collections[0].get_offsets().ravel()]


def flat(points: Iterable[tuple[float, float]]) -> list[float]:
    return [float(value) for point in points for value in point]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(higher-is-better x, lower-is-better y): the points no other point beats on both, sorted by x."""
    return sorted(p for p in points if not any(o[0] >= p[0] and o[1] <= p[1] and o != p for o in points))


def study_file(pytester: pytest.Pytester) -> Path:
    return pytester.path / "baselines/test_sweep/test_ubatch.study.json"


def test_a_study_records_its_operating_point_then_reports_a_change(pytester: pytest.Pytester,
                                                                   drawn: dict[str, Figure]) -> None:
    pytester.makepyfile(test_sweep=STUDY.format(extra=", fail_on_change=True"))
    recorded = pytester.runpytest(*ARGS, "--update-baselines")
    recorded.assert_outcomes(passed=3)
    recorded.stdout.fnmatch_lines([
        "study test_sweep.py::test_ubatch over n_ubatch (3 of 3 points; rule: maximise completion_tok_s; "
        "rss_peak_gib <= 4 GiB):",
        "*metric*8*32*128*",
        "*operating point: n_ubatch=*: highest completion_tok_s (*) among points meeting rss_peak_gib <= 4 GiB*",
        "*operating point n_ubatch=* recorded in test_ubatch.study.json",
        "*figures in *out: report-figures/test_sweep-test_ubatch-objective.png, *memory.png, *",
    ])
    stored = json.loads(study_file(pytester).read_text())
    (hardware, choice), = stored["choices"].items()
    assert hardware.startswith("cpu:") and choice["point"]["n_ubatch"] in (8, 32, 128)
    assert choice["rule"] == "maximise completion_tok_s; rss_peak_gib <= 4 GiB"
    report = json.loads((pytester.path / "out/report.json").read_text())
    (study,) = report["studies"]
    assert study["chosen"] == choice["point"]
    points = [point["metrics"] for point in study["points"]]
    assert [point["params"]["n_ubatch"] for point in study["points"]] == [8, 32, 128]
    # The gated buffers: llama.cpp's compute buffer grows with the micro-batch, the rest does not move.
    compute = [point["engine_compute_gib"] for point in points]
    assert compute[0] < compute[1] < compute[2]
    rest = [point["engine_mem_gib"] - point["engine_compute_gib"] for point in points]
    assert rest == pytest.approx([rest[0]] * 3)

    # What the figures draw: the study's own numbers, in the units on their axes (a tiny model's RSS in MiB,
    # latencies under a second in ms).
    assert set(drawn) == {"objective", "memory", "speed", "pareto"}
    labels = ["8", "32", "128"]
    chosen = labels.index(str(study["chosen"]["n_ubatch"]))
    objective, constraint = drawn["objective"].axes
    assert objective.get_title() == "Objective: maximise completion_tok_s vs n_ubatch"
    assert lines(objective) == {"completion_tok_s (objective)": pytest.approx([p["completion_tok_s"] for p in points])}
    assert constraint.get_title() == "Constraint: rss_peak_gib <= 4 GiB"
    (memory,) = drawn["memory"].axes
    assert (memory.get_title(), memory.get_xlabel(), memory.get_ylabel()) == ("Memory vs n_ubatch", "n_ubatch",
                                                                              "memory (MiB)")
    assert ticks(memory) == labels
    assert lines(memory) == {"rss_peak_gib": pytest.approx([p["rss_peak_gib"] * 1024 for p in points])}
    assert memory.get_ylim()[0] == 0 and "chosen" in annotations(memory)
    throughput, latency = drawn["speed"].axes
    assert (throughput.get_ylabel(), latency.get_ylabel()) == ("throughput (tok/s)", "latency (ms)")
    assert ticks(throughput) == ticks(latency) == labels
    assert lines(throughput) == {"completion_tok_s (objective)": pytest.approx([p["completion_tok_s"] for p in points]),
                                 "total_tok_s": pytest.approx([p["total_tok_s"] for p in points])}
    assert lines(latency) == {name: pytest.approx([p[name] * 1000 for p in points]) for name in (
        "e2e_p50", "e2e_p90", "e2e_p99", "ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")}
    # The objective against what the rule trades it with: its constraint's metric (memory from 0).
    (pareto,) = drawn["pareto"].axes
    assert pareto.get_title() == "Pareto front: completion_tok_s vs rss_peak_gib"
    assert (pareto.get_xlabel(), pareto.get_ylabel()) == ("completion_tok_s (tok/s) (higher is better, objective)",
                                                          "rss_peak_gib (MiB) (lower is better)")
    measured = [(p["completion_tok_s"], p["rss_peak_gib"] * 1024) for p in points]
    assert offsets(pareto) == pytest.approx(flat(measured))
    assert pareto.get_ylim()[0] == 0
    assert annotations(pareto) == [label + (" (chosen)" if i == chosen else "") for i, label in enumerate(labels)]
    (front,) = [line for line in pareto.get_lines() if line.get_label() == "Pareto front"]
    assert flat(zip(front.get_xdata(), front.get_ydata(), strict=True)) == pytest.approx(flat(pareto_front(measured)))
    png = pytester.path / "out/report-figures/test_sweep-test_ubatch-pareto.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (pytester.path / "out/report.md").read_text()
    assert "### Study: test_sweep.py::test_ubatch" in markdown
    assert "**operating point: n_ubatch=" in markdown
    assert "![test_sweep-test_ubatch-memory](report-figures/test_sweep-test_ubatch-memory.png)" in markdown

    # A stored point the rule does not choose now: reported with what changed, and (fail_on_change) a failure.
    choice["point"] = {"n_ubatch": 999}
    choice["fingerprint"]["versions"]["llama-cpp-python"] = "0.0.1"
    study_file(pytester).write_text(json.dumps(stored))
    checked = pytester.runpytest(*ARGS)
    checked.assert_outcomes(passed=3)
    assert checked.ret == pytest.ExitCode.TESTS_FAILED
    verdicts = {(entry["test"], metric["metric"]): metric["verdict"]
                for entry in json.loads((pytester.path / "out/report.json").read_text())["tests"]
                for metric in entry["metrics"] if metric["metric"] in ("engine_compute_gib", "engine_mem_gib")}
    assert len(verdicts) == 6 and set(verdicts.values()) == {"ok"}
    checked.stdout.fnmatch_lines([
        "*operating point changed: n_ubatch=999 -> n_ubatch=*; what changed since it was chosen: "
        "versions.llama-cpp-python 0.0.1 -> *",
        "*FAILED test_sweep.py::test_ubatch: operating point changed*fail_on_change=True; accept it with "
        "pytest -m perf --update-baselines test_sweep.py::test_ubatch)",
    ])


def test_a_partly_selected_study_chooses_nothing_and_its_file_is_not_stale(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sweep=STUDY.format(extra=""))
    assert pytester.runpytest(*ARGS, "--update-baselines").ret == 0
    one = pytester.runpytest(*ARGS, "-k", "32")
    one.assert_outcomes(passed=1, deselected=2)
    one.stdout.fnmatch_lines(["*no operating point: 1 of 3 points measured: run the whole study*"])
    assert "stale baseline files" not in one.stdout.str()
    assert study_file(pytester).is_file()


def test_points_on_different_xdist_workers_form_one_study(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_sweep=STUDY.format(extra=""))
    result = pytester.runpytest_subprocess(*ARGS, "--update-baselines", "-n", "2")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*3 of 3 points*", "*operating point n_ubatch=* recorded*"])


def test_an_axis_that_is_not_parametrized_fails_the_test_naming_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.perf_study(axis='n_batch', maximise='completion_tok_s')\n"
        "@pytest.mark.parametrize('n_ubatch', [8, 16])\n"
        "def test_x(n_ubatch):\n    pass\n"
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*perf_study axis 'n_batch' is not a parameter of the test*['n_ubatch']*"])


VLLM_STUDY = """
import pytest
from pytest_llmperf import Workload

# Accuracy per task as a tuned model scores it: flat within stderr except a drop at the largest batch.
ACCURACY = {{64: (0.712, 0.571), 128: (0.714, 0.570), 192: (0.713, 0.572), 224: (0.690, 0.540)}}

@pytest.mark.perf
@pytest.mark.perf_study(axis="max_num_seqs", maximise="completion_tok_s", accuracy_within=1,
                        constraints=["mem_max_gib <= 78"])
@pytest.mark.parametrize("max_num_seqs", [64, 128, 192, 224])
def test_max_num_seqs(engine_factory, llmperf, max_num_seqs, gpus, llm_class):
    for gpu, share in zip(gpus, (1.0, 0.9)):  # two GPUs (tensor parallel): the KV cache grows with the batch
        gpu.reads.clear()
        gpu.used_gib = [8.0, share * (40.0 + max_num_seqs / 6), share * (30.0 + max_num_seqs / 8)]
    llm_class.per_token_s = 0.004 / (1 + max_num_seqs / 64)
    engine = engine_factory("vllm", model="meta-llama/Llama-3.1-8B", max_num_seqs=max_num_seqs)
    llmperf.measure(engine, Workload(n_prompt=16, n_predict=16, requests=4, concurrency=4, warmup=0,
                                     repetitions=1, max_repetitions=1), track_gpu=True)
    arc, hellaswag = ACCURACY[max_num_seqs]
    llmperf.check({{"arc_easy.acc": arc, "hellaswag.acc_norm": hellaswag}},
                  stderr={{"arc_easy.acc": 0.009, "hellaswag.acc_norm": 0.005}}, engine=engine)
"""
VLLM_CONFTEST = """
import pytest

@pytest.fixture
def gpus():
    import sys
    return sys.modules["pynvml"].scripted_gpus

@pytest.fixture
def llm_class():
    import sys
    return sys.modules["vllm"].LLM
"""


def test_the_vllm_study_shape_runs_end_to_end_on_the_fakes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                           drawn: dict[str, Figure]) -> None:
    fake_vllm.install(monkeypatch)
    gpus = [FakeGpu(), FakeGpu(uuid="GPU-00000000-0000-0000-0000-000000000001")]
    pynvml = make_pynvml(gpus)
    pynvml.scripted_gpus = gpus  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", pynvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(fake_vllm.LLM, "per_token_s", fake_vllm.LLM.per_token_s)
    hardware.gpu_info.cache_clear()
    try:
        pytester.makeconftest(VLLM_CONFTEST)
        pytester.makepyfile(test_vllm_study=VLLM_STUDY.format())
        result = pytester.runpytest(*ARGS, "--update-baselines")
    finally:
        hardware.gpu_info.cache_clear()
    result.assert_outcomes(passed=4)
    report = json.loads((pytester.path / "out/report.json").read_text())
    (study,) = report["studies"]
    # 224 is fastest but drops accuracy (1.9 stderr on arc_easy, 4.5 on hellaswag); 192 is its neighbour, so the
    # plateau point is 128 (its neighbours 64 and 192 pass).
    assert study["chosen"] == {"max_num_seqs": 128}
    assert study["excluded"]["test_vllm_study.py::test_max_num_seqs[224]"][0] == \
        "arc_easy.acc 0.69 (1.9 stderr from the best, 0.714 at 128; allowed 1)"
    assert study["points"][1]["metrics"]["mem_max_gib"] == pytest.approx(40 + 128 / 6)  # the peak, of GPU 0
    assert study["points"][1]["metrics"]["mem_mean_gib"] == pytest.approx(0.95 * (40 + 128 / 6))  # mean of peaks
    assert study["points"][0]["stderr"]["arc_easy.acc"] == 0.009
    figures = {Path(path).stem.rsplit("-", 1)[-1] for path in study["figures"]}
    assert figures == {"objective", "memory", "speed", "accuracy_heatmap", "accuracy_normalised",
                       "memory_vs_accuracy", "pareto"}
    for path in study["figures"]:
        assert (pytester.path / "out" / path).is_file()

    # What the figures draw, against the numbers the fakes were scripted with.
    seqs, labels = [64, 128, 192, 224], ["64", "128", "192", "224"]
    peak = [40 + n / 6 for n in seqs]  # GPU 0's, the larger
    arc = [0.712, 0.714, 0.713, 0.690]
    hellaswag = [0.571, 0.570, 0.572, 0.540]
    (memory,) = drawn["memory"].axes
    assert (memory.get_xlabel(), memory.get_ylabel()) == ("max_num_seqs", "memory (GiB)")
    assert ticks(memory) == labels
    mean = [0.95 * m for m in peak]  # GPU 1 at 0.9 of GPU 0: the mean of the two peaks
    assert lines(memory) == {"mem_max_gib": pytest.approx(peak), "mem_mean_gib": pytest.approx(mean)}
    heatmap, colorbar = drawn["accuracy_heatmap"].axes
    assert heatmap.get_title() == "Accuracy per task vs max_num_seqs" and colorbar.get_ylabel() == "score"
    assert ticks(heatmap) == labels
    assert [label.get_text() for label in heatmap.get_yticklabels()] == ["arc_easy.acc", "hellaswag.acc_norm"]
    assert heatmap.images[0].get_array().tolist() == [arc, hellaswag]
    assert annotations(heatmap)[:2] == ["0.712\n±0.009", "0.714\n±0.009"]
    assert annotations(heatmap)[4] == "0.571\n±0.005"
    (normalised,) = [ax for ax in drawn["accuracy_normalised"].axes]
    assert normalised.get_ylabel() == "normalised score (0 = task's worst, 1 = best)"
    assert lines(normalised) == {
        "arc_easy.acc [0.690..0.714]": pytest.approx([(a - 0.690) / 0.024 for a in arc]),
        "hellaswag.acc_norm [0.540..0.572]": pytest.approx([(h - 0.540) / 0.032 for h in hellaswag]),
    }
    (tradeoff,) = drawn["memory_vs_accuracy"].axes
    assert (tradeoff.get_xlabel(), tradeoff.get_ylabel()) == ("mem_max_gib (GiB)", "global accuracy (mean over tasks)")
    means = [(a + h) / 2 for a, h in zip(arc, hellaswag, strict=True)]
    assert offsets(tradeoff) == pytest.approx(flat(zip(peak, means, strict=True)))
    # The chosen point is marked, in bold; the others are not.
    assert annotations(tradeoff) == ["64", "128 (chosen)", "192", "224"]
    assert [text.get_fontweight() for text in tradeoff.texts] == ["normal", "bold", "normal", "normal"]
    (pareto,) = drawn["pareto"].axes
    points = [point["metrics"] for point in study["points"]]
    assert (pareto.get_xlabel(), pareto.get_ylabel()) == ("completion_tok_s (tok/s) (higher is better, objective)",
                                                          "mem_max_gib (GiB) (lower is better)")
    assert offsets(pareto) == pytest.approx(flat((p["completion_tok_s"], p["mem_max_gib"]) for p in points))
    assert annotations(pareto) == ["64", "128 (chosen)", "192", "224"]
    result.stdout.fnmatch_lines(["*operating point: max_num_seqs=128: highest completion_tok_s*"])
