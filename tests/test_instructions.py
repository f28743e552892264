"""Instructions per token under callgrind (``measure/instructions.py``): attribution of callgrind's dumps, the
unavailable cases with their reasons, and on the real engine under the real valgrind: the count repeats across
processes and sees a 2% change in work; through the fixture it is recorded, judged at 1%, and in strict mode a
missing valgrind fails the test."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES
from pytest_llmperf.engines import create_engine
from pytest_llmperf.errors import EngineError, LlmperfError
from pytest_llmperf.measure.instructions import instructions, per_phase, read_counts

needs_valgrind = pytest.mark.skipif(shutil.which("valgrind") is None,
                                    reason="valgrind is not installed (.ci/run installs it)")


def _dump(directory: Path, suffix: str, instructions_counted: int) -> None:
    (directory / f"callgrind.out{suffix}").write_text(
        f"# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: {instructions_counted}\n"
        f"totals: {instructions_counted}\n")


def test_dumps_are_read_in_call_order_and_attributed_to_their_phases(tmp_path: Path) -> None:
    for number, counted in ((1, 500), (2, 10), (3, 100), (10, 7), (4, 40), (5, 41), (6, 6), (7, 42), (8, 43),
                            (9, 44)):
        _dump(tmp_path, f".{number}", counted)
    _dump(tmp_path, "", 0)  # the dump at the program's end: outside every computation, not a phase's
    counts = read_counts(tmp_path)
    assert counts == [500, 10, 100, 40, 41, 6, 42, 43, 44, 7]  # by number: .10 after .9, not after .1
    phases = [("warm-up", 2), ("pp", 3), ("depth", 4), ("tg", 6), ("depth", 7), ("tg", 10)]
    assert per_phase(counts, phases) == [("warm-up", 510), ("pp", 100), ("depth", 40), ("tg", 47), ("depth", 42),
                                         ("tg", 94)]
    with pytest.raises(EngineError, match="callgrind wrote 10 dumps but the counted work made 11 graph"):
        per_phase(counts, [*phases, ("tg", 11)])
    (tmp_path / "callgrind.out.11").write_text("events: Ir\n")
    with pytest.raises(EngineError, match=r"callgrind\.out\.11 without a 'summary:' line"):
        read_counts(tmp_path)


class _Engine:
    backend = "llama_cpp"

    def __init__(self, n_gpu_layers: int = 0) -> None:
        self.n_gpu_layers = n_gpu_layers

    def native_params(self) -> dict[str, object]:
        return {"model": "unused.gguf", "model_params": {"n_gpu_layers": self.n_gpu_layers}, "context_params": {}}


def test_without_valgrind_the_counts_are_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    result = instructions(_Engine())
    assert result.metrics() == {"pp_instructions_per_token": None, "tg_instructions_per_token": None}
    assert result.unavailable == "valgrind is not installed (a system package: apt-get install valgrind)"
    assert result.describe().startswith("instructions per token unavailable: valgrind is not installed")


def _fake_valgrind(directory: Path, stderr: str, code: int) -> None:
    """A ``valgrind`` that prints its version, and otherwise ``stderr`` with exit ``code``."""
    script = directory / "valgrind"
    script.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo valgrind-3.19.0; exit 0; fi\n"
                      f"printf '%s\\n' {json.dumps(stderr)} >&2\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_a_build_valgrind_cannot_run_is_unavailable_and_another_failure_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_valgrind(tmp_path, "vex amd64->IR: unhandled instruction bytes: 0x62 0xF1 0x7D 0x48", 1)
    result = instructions(_Engine())
    assert result.metrics()["tg_instructions_per_token"] is None
    assert result.unavailable is not None
    assert result.unavailable.startswith("valgrind 3.19.0 cannot run this llama.cpp build")
    assert "unhandled instruction bytes: 0x62" in result.unavailable
    _fake_valgrind(tmp_path, "==1== something else went wrong", 3)
    with pytest.raises(EngineError, match=r"(?s)failed \(exit 3\):.*something else went wrong"):
        instructions(_Engine())


def test_an_engine_that_offloads_to_a_gpu_is_not_counted() -> None:
    result = instructions(_Engine(n_gpu_layers=99))
    assert result.metrics()["pp_instructions_per_token"] is None
    assert result.unavailable == ("the engine offloads 99 layers to a GPU (n_gpu_layers=99); instructions are "
                                  "counted for llama.cpp's CPU work only")


def test_bad_arguments_and_engines_without_a_native_model_are_refused() -> None:
    class Server:
        backend = "openai"

    with pytest.raises(LlmperfError, match="need the llama_cpp backend"):
        instructions(Server())
    with pytest.raises(LlmperfError, match="n_gen must be a non-negative integer, got -1"):
        instructions(_Engine(), n_gen=-1)
    with pytest.raises(LlmperfError, match="n_prompt or n_gen > 0"):
        instructions(_Engine(), n_prompt=0, n_gen=0)


def test_the_metrics_are_portable_lower_is_better_and_gated_at_one_percent() -> None:
    for name in ("pp_instructions_per_token", "tg_instructions_per_token", "decode.tg_instructions_per_token"):
        spec = metric_spec(name)
        assert (spec.direction, spec.unit, spec.portable) == ("lower", "instr/token", True)
    assert DEFAULT_TOLERANCES["*_instructions_per_token"] == "1%"


@needs_valgrind
def test_the_count_repeats_in_another_process_and_sees_a_two_percent_longer_context() -> None:
    # Flash attention: the generation's attention work grows with the context (~0.09% a token here).
    engine = create_engine("llama_cpp", {"model": "q4_k_m", "flash_attn": True, "n_ctx": 128})
    try:
        first = instructions(engine, n_prompt=8, n_gen=4)
        again = instructions(engine, n_prompt=8, n_gen=4)
        deeper = instructions(engine, n_prompt=0, n_gen=4, n_depth=23)
    finally:
        engine.close()
    assert first.unavailable is None and first.pp and first.tg
    assert (first.pp, first.tg) == (again.pp, again.tg)  # exactly: another process, the same count
    assert first.counted_with["valgrind"] and "AVX2 = 1" in first.counted_with["llama_cpp_features"]
    assert 1e6 < first.tg[0] < 1e9 and 1e6 < first.pp[0] < 1e9
    assert deeper.pp == () and deeper.pp_instructions_per_token is None
    assert 0.015 < deeper.tg[0] / first.tg[0] - 1 < 0.03


TEST = """
import pytest

@pytest.mark.perf
def test_counted(engine_factory, llmperf):
    engine = engine_factory("llama_cpp", model="q4_k_m", n_ctx=128)
    result = llmperf.instructions(engine, n_prompt=8, n_gen=4)
    assert result.describe()
"""


@needs_valgrind
def test_recorded_judged_at_one_percent_and_a_two_percent_increase_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_counted=TEST)
    args = ("-m", "perf", "-p", "no:cacheprovider", "--llmperf-report", "out/report.json")
    pytester.runpytest(*args, "--update-baselines").assert_outcomes(passed=1)
    path = pytester.path / "baselines/test_counted/test_counted.json"
    stored = json.loads(path.read_text())
    assert set(stored["metrics"]) == {"pp_instructions_per_token", "tg_instructions_per_token"}
    assert stored["fingerprint"]["counted_with"]["valgrind"]
    assert stored["workload"] == {"n_prompt": 8, "n_gen": 4, "n_depth": 0, "repetitions": 1, "threads": 1}

    checked = pytester.runpytest(*args)
    checked.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "out/report.json").read_text())
    comparisons = {metric["metric"]: metric for metric in report["tests"][0]["metrics"]}
    assert comparisons["tg_instructions_per_token"]["verdict"] == "ok"
    assert comparisons["tg_instructions_per_token"]["current"] == stored["metrics"]["tg_instructions_per_token"][
        "value"]

    # The baseline counted 2% less: the same work now counts 2% more, beyond the 1% tolerance.
    entry = stored["metrics"]["tg_instructions_per_token"]
    entry["value"] /= 1.02
    entry["samples"] = [entry["value"]]
    path.write_text(json.dumps(stored))
    grown = pytester.runpytest(*args)
    grown.assert_outcomes(failed=1)
    grown.stdout.fnmatch_lines(["*performance regression in test_counted.py::test_counted*",
                                "*tg_instructions_per_token: * -> * (+2.0%*tolerance 1%)*"])


def test_a_gated_count_without_valgrind_fails_in_strict_mode_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "no-valgrind"
    empty.mkdir()
    pytester.makepyfile(test_counted=TEST)
    # Counted elsewhere (a portable metric: judged against an entry of any hardware class).
    baseline = pytester.path / "baselines/test_counted/test_counted.json"
    baseline.parent.mkdir(parents=True)
    baseline.write_text(json.dumps({
        "schema": 1, "test": "test_counted.py::test_counted",
        "fingerprint": {"backend": "llama_cpp", "hardware": {"class": "cpu:Elsewhere:2"}},
        "workload": {"n_prompt": 8, "n_gen": 4, "n_depth": 0, "repetitions": 1, "threads": 1},
        "metrics": {"pp_instructions_per_token": {"value": 8.3e6}, "tg_instructions_per_token": {"value": 1.66e7}},
    }))
    args = ("-m", "perf", "-p", "no:cacheprovider")
    monkeypatch.setenv("PATH", str(empty))
    strict = pytester.runpytest(*args, "--llmperf-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*[[]strict[]]*pp_instructions_per_token unavailable: valgrind is not installed "
                                 "(a system package: apt-get install valgrind)*"])
    lenient = pytester.runpytest(*args)
    lenient.assert_outcomes(passed=1)
    lenient.stdout.fnmatch_lines(["*tg_instructions_per_token unavailable: valgrind is not installed*"])
