"""One record per test (issue 13): measure, then score, then fidelity — each without check=False — judged once when
the test ends, one baseline file, all regressions in one message; names for calls that measure the same
metric; every measured metric in the reports. End to end through pytest on the real llama.cpp engine, with and
without pytest-xdist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_llmperf.core.record import Part, TestRecord, merged_fingerprint
from pytest_llmperf.errors import LlmperfError

NATURAL = """
import pytest
from pytest_llmperf import Workload

@pytest.mark.perf
def test_all(engine_factory, llmperf, lm_eval_scorer):
    engine = engine_factory("llama_cpp", model="q4_k_m", n_threads=1, n_ctx=512)
    speed = llmperf.measure(engine, Workload(n_prompt=16, n_predict=16, requests=2, repetitions=2),
                            gate=["completion_tok_s", "e2e_p99"])
    scores = lm_eval_scorer(engine, ["llmperf_arc"], limit=8)
    fidelity = llmperf.fidelity(engine, ["The quick brown fox", "jumps over the lazy dog"])
    # Each call's result is there at once, for plain asserts.
    assert speed.completion_tok_s > 0 and scores.metrics["llmperf_arc.acc"] >= 0 and fidelity.kl_mean >= 0
"""
BASELINE = "baselines/test_all/test_all.json"
WIDE = ("--llmperf-tolerance", "*=90%", "--llmperf-tolerance", "*.*=0.5")


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", *args)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_measure_score_and_fidelity_make_one_record(pytester: pytest.Pytester, workers: list[str]) -> None:
    pytester.makepyfile(test_all=NATURAL)
    first = run(pytester, *workers, *WIDE)
    first.assert_outcomes(passed=1, warnings=1)  # one "new" warning for the whole test, not one per call

    run(pytester, *workers, *WIDE, "--update-baselines").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / BASELINE).read_text())
    assert set(stored["metrics"]) == {
        "completion_tok_s", "e2e_p99", "llmperf_arc.acc", "llmperf_arc.acc_norm",
        "kl_mean", "kl_max", "top1_agree", "ref_logprob_mean",
    }
    assert stored["reference"]["prompts"]  # the fidelity reference, in the same file
    assert stored["fingerprint"]["versions"]["lm-eval"]  # the scorer's part of the fingerprint
    assert set(stored["workload"]) == {"measure()", "lm_eval_scorer()", "fidelity()"}
    assert [p.name for p in (pytester.path / "baselines/test_all").iterdir()] == ["test_all.json"]

    run(pytester, *workers, *WIDE, "--llmperf-strict").assert_outcomes(passed=1)

    # A baseline far better than this engine in speed and in accuracy: one failure naming every regression.
    stored["metrics"]["completion_tok_s"]["value"] *= 100
    stored["metrics"]["completion_tok_s"]["samples"] = []
    stored["metrics"]["llmperf_arc.acc"] = {"value": 1.0, "stderr": 0.0}
    (pytester.path / BASELINE).write_text(json.dumps(stored))
    regressed = run(pytester, *workers, *WIDE, "--llmperf-confirm", "0")
    regressed.assert_outcomes(failed=1)
    output = regressed.stdout.str()
    assert output.count("performance regression in test_all.py::test_all") == 1
    regressed.stdout.fnmatch_lines([
        "*performance regression in test_all.py::test_all*",
        "*completion_tok_s: * -> * (-9*%, tolerance 90%)*",
        "*llmperf_arc.acc: 1 -> *, tolerance 0.5)*",
    ])


def test_metrics_of_two_calls_collide_unless_named(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(
        test_two="""
        import os, pytest
        from pytest_llmperf import Workload

        @pytest.mark.perf
        def test_two(engine_factory, llmperf):
            engine = engine_factory("llama_cpp", model="q4_k_m", n_threads=1, n_ctx=256)
            names = ("decode", "prefill") if os.environ.get("NAMED") else (None, None)
            llmperf.measure(engine, Workload(n_prompt=8, n_predict=16, requests=1, repetitions=1),
                            gate=["completion_tok_s"], name=names[0])
            llmperf.measure(engine, Workload(n_prompt=64, n_predict=2, requests=1, repetitions=1),
                            gate=["ttft_p50"], name=names[1])
        """
    )
    clash = run(pytester)
    clash.assert_outcomes(failed=1)
    clash.stdout.fnmatch_lines(["*measure() and measure() both measured*give each call a name=*"])
    assert "Traceback" not in clash.stdout.str()

    monkeypatch.setenv("NAMED", "1")
    run(pytester, "--update-baselines").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / "baselines/test_two/test_two.json").read_text())
    assert set(stored["metrics"]) == {"decode.completion_tok_s", "prefill.ttft_p50"}
    assert set(stored["workload"]) == {"decode", "prefill"}


def test_the_json_report_holds_every_measured_metric(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_one="""
        import pytest
        from pytest_llmperf import Workload

        @pytest.mark.perf
        def test_one(engine_factory, llmperf):
            engine = engine_factory("llama_cpp", model="q4_k_m", n_threads=1, n_ctx=256)
            llmperf.measure(engine, Workload(n_prompt=8, n_predict=8, requests=2, repetitions=2, max_repetitions=2),
                            gate=["completion_tok_s"])
        """
    )
    run(pytester, "--llmperf-report", "out/report.json").assert_outcomes(passed=1, warnings=1)
    report = json.loads((pytester.path / "out/report.json").read_text())
    (test,) = report["tests"]
    metrics = {entry["metric"]: entry for entry in test["metrics"]}
    assert {"e2e_p50", "itl_p99", "wall_time_s", "ttft_mean", "rss_peak_gib", "completion_tok_s"} <= set(metrics)
    assert metrics["completion_tok_s"]["gated"] is True and metrics["completion_tok_s"]["verdict"] == "new"
    assert metrics["e2e_p50"]["gated"] is False and metrics["e2e_p50"]["verdict"] == "not gated"
    assert len(metrics["e2e_p50"]["samples"]) == 2  # one per repetition
    assert test["workload"]["n_prompt"] == 8 and test["fingerprint"]["backend"] == "llama_cpp"
    assert test["baseline_path"] == "baselines/test_one/test_one.json"  # no absolute path of this machine
    assert str(pytester.path) not in (pytester.path / "out/report.json").read_text()
    markdown = (pytester.path / "out/report.md").read_text().splitlines()
    assert markdown[2] == "**1 new**"  # the headline opens the report
    assert any("e2e_p50" in line for line in markdown)  # every measured metric, folded
    # The compare command sees the ungated metrics too.
    from pytest_llmperf.reports.json_report import load_report_values

    assert ("test_one.py::test_one", "itl_p99") in load_report_values(pytester.path / "out/report.json")


def test_markdown_opens_with_the_headline_and_the_failures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_many="""
        import pytest

        @pytest.mark.perf
        @pytest.mark.parametrize("value", [0.5, 0.5, 0.5], ids=["value0", "value1", "value2"])
        def test_latency(llmperf, value):
            llmperf.check({"e2e_p99": value})
        """
    )
    run(pytester, "--update-baselines").assert_outcomes(passed=3)
    path = pytester.path / "baselines/test_many/test_latency[value1].json"
    stored = json.loads(path.read_text())
    stored["metrics"]["e2e_p99"]["value"] = 0.1
    path.write_text(json.dumps(stored))
    run(pytester, "--llmperf-report", "r.json").assert_outcomes(passed=2, failed=1)
    lines = (pytester.path / "r.md").read_text().splitlines()
    assert lines[:3] == ["## pytest-llmperf", "", "**1 regressed, 2 ok**"]
    assert lines[4] == "```" and lines[5].startswith("performance regression in test_many.py::test_latency[value1]")


# --- the record itself, without pytest -------------------------------------------------------------------------


def _part(call: str, metrics: dict[str, float | None], name: str | None = None, **fields: object) -> Part:
    return Part(call, metrics, tuple(metrics), name=name, **fields)  # type: ignore[arg-type]


def test_a_record_names_both_calls_of_a_collision() -> None:
    record = TestRecord("t.py::test")
    record.add(_part("measure", {"completion_tok_s": 1.0, "e2e_p99": 0.1}))
    with pytest.raises(LlmperfError, match=r"measure\(\) and check\(\) both measured e2e_p99.*name="):
        record.add(_part("check", {"e2e_p99": 0.2}))
    record.add(_part("check", {"named.e2e_p99": 0.2}, name="named"))
    assert set(record.measurement().metrics) == {"completion_tok_s", "e2e_p99", "named.e2e_p99"}


def test_fingerprints_merge_and_a_different_engine_keeps_its_own() -> None:
    same = {"backend": "llama_cpp", "versions": {"numpy": "2"}}
    parts = [
        _part("measure", {"a.e2e_p99": 1.0}, "a", fingerprint=same),
        _part("lm_eval_scorer", {"x.acc": 0.5}, fingerprint={**same, "versions": {"lm-eval": "0.4"}, "accuracy": 1}),
        _part("measure", {"b.e2e_p99": 1.0}, "b", fingerprint={"backend": "openai", "versions": {"numpy": "2"}}),
    ]
    merged = merged_fingerprint(parts)
    assert merged["versions"] == {"numpy": "2", "lm-eval": "0.4"} and merged["accuracy"] == 1
    assert merged["parts"] == {"b": {"backend": "openai", "versions": {"numpy": "2"}}}


def test_named_metrics_take_the_unnamed_metrics_direction_and_tolerance(tmp_path: Path) -> None:
    from pytest_llmperf.core.metrics import metric_spec
    from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable

    assert metric_spec("prefill.ttft_p50").direction == "lower"
    assert metric_spec("decode.completion_tok_s").unit == "tok/s"
    table = ToleranceTable([("ini", {"decode.completion_tok_s": "5%"}), ("default", DEFAULT_TOLERANCES)])
    assert str(table.for_metric("decode.completion_tok_s")) == "5%"
    assert str(table.for_metric("other.completion_tok_s")) == "30%"  # *_tok_s, not accuracy's *.*


def test_two_named_fidelity_calls_keep_their_own_references(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_refs="""
        import pytest

        @pytest.mark.perf
        def test_refs(engine_factory, llmperf):
            engine = engine_factory("llama_cpp", model="q4_k_m", n_threads=1, n_ctx=256)
            llmperf.fidelity(engine, ["The quick brown fox"], name="short")
            llmperf.fidelity(engine, ["A longer sentence about the lazy dog and the fox"], name="long")
        """
    )
    run(pytester, "--update-baselines").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / "baselines/test_refs/test_refs.json").read_text())
    assert set(stored["reference"]["by_name"]) == {"short", "long"}
    assert {"short.kl_mean", "long.kl_mean", "short.top1_agree"} <= set(stored["metrics"])
    run(pytester, "--llmperf-strict").assert_outcomes(passed=1)  # each call found its own reference
