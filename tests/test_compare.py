"""``python -m pytest_llmperf compare`` over known numbers: the printed values, differences and percentages
exactly, tolerance-aware marks, fingerprint differences, --fail-on-regression and --plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.__main__ import main

TEST = "perf_tests/test_x.py::test_decode"


def write_report(path: Path, values: dict[str, float], version: str = "0.3.36",
                 gated: dict[str, str] | None = None, stderr: dict[str, float] | None = None,
                 status: str = "passed", workload: dict[str, Any] | None = None) -> Path:
    gated = gated or {}
    metrics: list[dict[str, Any]] = []
    for name, value in values.items():
        entry: dict[str, Any] = {"metric": name, "current": value, "samples": [value]}
        if name in gated:
            entry.update(gated=True, baseline=value, tolerance={"kind": "relative", "amount": 0.0,
                                                                "text": gated[name]}, verdict="ok")
        else:
            entry.update(gated=False, verdict="not gated")
        if stderr and name in stderr:
            entry["stderr"] = stderr[name]
        metrics.append(entry)
    test = {"test": TEST, "status": status, "metrics": metrics,
            "fingerprint": {"versions": {"llama-cpp-python": version}},
            "workload": workload if workload is not None else {"n_prompt": 16, "n_predict": 48, "requests": 8}}
    path.write_text(json.dumps({"schema": 1, "tests": [test]}), encoding="utf-8")
    return path


BEFORE = {"completion_tok_s": 100.0, "e2e_p95": 1.0, "e2e_p99": 1.0, "tpot_p50": 0.010, "rss_peak_gib": 0.5,
          "task.acc": 0.80}
AFTER = {"completion_tok_s": 95.04, "e2e_p95": 0.99902, "e2e_p99": 0.99922, "tpot_p50": 0.0125,
         "rss_peak_gib": 0.5, "task.acc": 0.70}
GATED = {"completion_tok_s": "10%", "tpot_p50": "15%"}


def test_two_reports_print_each_value_the_difference_and_the_change_exactly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = write_report(tmp_path / "before.json", BEFORE, "0.3.35", GATED, {"task.acc": 0.02})
    after = write_report(tmp_path / "after.json", AFTER, "0.3.36", GATED, {"task.acc": 0.02})
    assert main(["compare", str(before), str(after)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["test", "metric", "before", "after", "difference", "change", "%", "status"]
    rows = {row[1]: row[2:] for row in lines[1:7]}
    assert rows["completion_tok_s"] == ["100", "95.04", "-4.96", "-4.960", "within", "tolerance", "passed"]
    assert rows["e2e_p95"] == ["1", "0.99902", "-0.00098", "-0.098", "within", "tolerance", "passed"]
    assert rows["e2e_p99"] == ["1", "0.99922", "-0.00078", "-0.078", "within", "tolerance", "passed"]
    assert rows["tpot_p50"] == ["0.01", "0.0125", "+0.0025", "+25.000", "worse", "passed"]
    assert rows["rss_peak_gib"] == ["0.5", "0.5", "0", "0.000", "passed"]
    # Accuracy: 0.10 down; the built-in tolerance of an accuracy metric is 0.02 absolute.
    assert rows["task.acc"] == ["0.8", "0.7", "-0.1", "-12.500", "worse", "passed"]
    assert ["fingerprint", "changes", "before", "->", "after:"] in lines
    assert [f"{TEST}:", "versions.llama-cpp-python", "0.3.35", "->", "0.3.36"] in lines
    assert ["workload", "changes", "before", "->", "after:"] not in lines  # the same workload


def test_each_row_shows_the_test_status_in_each_run_and_a_workload_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A "+258% worse" is no regression the gate found when the later run was not judged and measured another
    workload: the row says both, and the workload difference is listed under the table."""
    before = write_report(tmp_path / "before.json", BEFORE, gated=GATED, status="passed",
                          workload={"n_prompt": 16, "n_predict": 48, "requests": 8})
    after = write_report(tmp_path / "after.json", {**BEFORE, "e2e_p99": 3.58}, gated=GATED, status="not judged",
                         workload={"n_prompt": 16, "n_predict": 192, "requests": 8})
    assert main(["compare", "--fail-on-regression", str(before), str(after)]) == 1
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    row = next(line for line in out if " e2e_p99 " in line)
    assert row.split()[2:] == ["1", "3.58", "+2.58", "+258.000", "worse", "passed", "->", "not", "judged,",
                               "workload", "changed"]
    assert all(line.rstrip().endswith("passed -> not judged, workload changed") for line in out[1:7])
    assert "workload changes before -> after:" in out
    assert f"  {TEST}: workload.n_predict 48 -> 192" in out
    assert f"{TEST} e2e_p99: before 1 -> after 3.58 (+258.000 %); status passed -> not judged, workload changed" \
        in captured.err

    # Three runs: every run's status, in order; a run that agrees with all the others is one word.
    third = write_report(tmp_path / "third.json", BEFORE, gated=GATED, status="regressed",
                         workload={"n_prompt": 16, "n_predict": 48, "requests": 8})
    assert main(["compare", str(before), str(after), str(third)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if " e2e_p99 " in line)
    assert row.rstrip().endswith("passed -> not judged -> regressed, workload changed")
    assert main(["compare", str(before), str(third)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if " e2e_p99 " in line)
    assert row.rstrip().endswith(" passed -> regressed")
    assert main(["compare", str(before), str(before)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if " e2e_p99 " in line)
    assert row.split()[-1] == "passed"


def test_three_reports_and_fail_on_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = [write_report(tmp_path / f"run{i}.json", values, gated=GATED)
               for i, values in enumerate([BEFORE, AFTER, {**BEFORE, "completion_tok_s": 120.0}])]
    assert main(["compare", *map(str, reports)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["test", "metric", "run0", "run1", "run2", "diff", "run1", "%", "run1", "mark", "run1",
                              "diff", "run2", "%", "run2", "mark", "run2", "status"]
    row = next(line.split() for line in out if " completion_tok_s " in line)
    assert row[2:] == ["100", "95.04", "120", "-4.96", "-4.960", "within", "tolerance", "+20", "+20.000", "better",
                       "passed"]
    assert main(["compare", "--fail-on-regression", *map(str, reports)]) == 1
    err = capsys.readouterr().err
    assert "2 metrics moved beyond tolerance in their bad direction" in err
    assert f"{TEST} tpot_p50: run0 0.01 -> run1 0.0125 (+25.000 %)" in err
    assert f"{TEST} task.acc: run0 0.8 -> run1 0.7 (-12.500 %)" in err


def test_plot_writes_the_four_before_after_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    before = write_report(tmp_path / "before.json", {**BEFORE, "mem_max_gib": 70.0, "mem_mean_gib": 60.0}, "1",
                          GATED, {"task.acc": 0.02})
    after = write_report(tmp_path / "after.json", {**AFTER, "mem_max_gib": 66.2, "mem_mean_gib": 57.0}, "2",
                         GATED, {"task.acc": 0.02})
    from matplotlib.colors import to_hex

    from pytest_llmperf.reports import figures

    drawn: dict[str, Any] = {}
    real_save = figures.save

    def save(fig: Any, path: Path) -> Path:
        drawn[path.stem] = fig.axes[0]
        return real_save(fig, path)

    monkeypatch.setattr(figures, "save", save)
    assert main(["compare", "--plot", str(tmp_path / "figures"), str(before), str(after)]) == 0
    out = capsys.readouterr().out
    for kind in ("throughput", "memory", "accuracy", "change"):
        png = tmp_path / "figures" / f"{kind}.png"
        assert png.stat().st_size > 0 and f"figure: {png}" in out, kind
    # What each figure draws: the runs' values in its bars, cells and labels, not just a file.
    assert [t.get_text() for t in drawn["throughput"].get_yticklabels()] == ["completion_tok_s"]
    assert [bar.get_width() for bar in drawn["throughput"].patches] == pytest.approx([100.0, 95.04])
    assert [t.get_text() for t in drawn["throughput"].get_legend().get_texts()] == ["before", "after"]
    memory = drawn["memory"]
    assert memory.get_title() == "Memory per run: GPU peak and mean, host peak RSS"  # what its bars are
    assert [t.get_text() for t in memory.get_yticklabels()] == ["mem_max_gib", "mem_mean_gib", "rss_peak_gib"]
    assert memory.get_xlabel() == "memory (GiB)"
    assert [bar.get_width() for bar in memory.patches] == pytest.approx([70.0, 60.0, 0.5, 66.2, 57.0, 0.5])
    cells = drawn["accuracy"].images[0].get_array()
    assert cells.tolist() == [[0.8, 0.7]]
    assert [t.get_text() for t in drawn["accuracy"].texts] == ["0.800\n±0.020", "0.700\n±0.020"]
    change = drawn["change"]
    rows = [t.get_text() for t in change.get_yticklabels()]
    assert rows == ["completion_tok_s", "tpot_p50"]  # the gated metrics
    bars = dict(zip(rows, change.patches, strict=True))
    assert bars["completion_tok_s"].get_width() == pytest.approx(-4.96)
    assert bars["tpot_p50"].get_width() == pytest.approx(25.0)
    assert to_hex(bars["tpot_p50"].get_facecolor()) == to_hex("tab:red")  # worse beyond its 15%
    assert to_hex(bars["completion_tok_s"].get_facecolor()) == to_hex("tab:gray")  # within its 10%


def test_a_bad_report_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    good = write_report(tmp_path / "good.json", BEFORE)
    assert main(["compare", str(good), str(bad)]) == 2
    assert f"{bad}: report schema None is not 1" in capsys.readouterr().err


def test_reports_with_no_test_in_common_are_an_error_naming_both_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = write_report(tmp_path / "before.json", BEFORE, gated=GATED)
    other = tmp_path / "other.json"
    document = json.loads(write_report(other, AFTER, gated=GATED).read_text(encoding="utf-8"))
    document["tests"][0]["test"] = "perf_tests/test_y.py::test_prefill"
    other.write_text(json.dumps(document), encoding="utf-8")
    assert main(["compare", str(before), str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{before} and {other} have no test in common" in err


def test_fail_on_regression_counts_a_gated_test_or_metric_a_later_run_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = write_report(tmp_path / "before.json", BEFORE, gated=GATED)
    # The later run measured the test but no longer has the gated tpot_p50 (everything else unchanged).
    lost_metric = write_report(tmp_path / "lost_metric.json",
                               {k: v for k, v in BEFORE.items() if k != "tpot_p50"}, gated=GATED)
    assert main(["compare", "--fail-on-regression", str(before), str(lost_metric)]) == 1
    err = capsys.readouterr().err
    assert f"{TEST} tpot_p50: gated in before, no value in lost_metric" in err

    # The later run lost the gated test altogether (another test kept the runs comparable).
    lost_test = tmp_path / "lost_test.json"
    document = json.loads(write_report(lost_test, BEFORE, gated=GATED).read_text(encoding="utf-8"))
    document["tests"][0]["test"] = "perf_tests/test_y.py::test_prefill"
    kept = json.loads(write_report(tmp_path / "kept.json", BEFORE).read_text(encoding="utf-8"))["tests"][0]
    kept["test"] = "perf_tests/test_z.py::test_kept"
    document["tests"].append(kept)
    first = json.loads(before.read_text(encoding="utf-8"))
    first["tests"].append(kept)
    before.write_text(json.dumps(first), encoding="utf-8")
    lost_test.write_text(json.dumps(document), encoding="utf-8")
    assert main(["compare", "--fail-on-regression", str(before), str(lost_test)]) == 1
    err = capsys.readouterr().err
    assert f"{TEST}: gated in before (completion_tok_s, tpot_p50), missing from lost_test" in err
    # Without the option the table is printed and the exit status stays 0.
    assert main(["compare", str(before), str(lost_test)]) == 0


def test_plot_to_an_existing_file_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    before = write_report(tmp_path / "before.json", BEFORE, gated=GATED)
    after = write_report(tmp_path / "after.json", AFTER, gated=GATED)
    existing = tmp_path / "figures.png"
    existing.write_bytes(b"not a folder")
    assert main(["compare", "--plot", str(existing), str(before), str(after)]) == 2
    err = capsys.readouterr().err
    assert f"--plot {existing}: is a file, not a folder; give a folder for the figures" in err
    assert existing.read_bytes() == b"not a folder"


def test_the_memory_figure_is_titled_by_the_metrics_it_draws() -> None:
    from pytest_llmperf.reports.compare import memory_title

    assert memory_title(["rss_peak_gib"]) == "Memory per run: host peak RSS"  # no "mean" it does not draw
    assert memory_title(["mem_max_gib"]) == "Memory per run: GPU peak"
    assert memory_title(["mem_mean_gib", "rss_peak_gib"]) == "Memory per run: GPU mean, host peak RSS"
