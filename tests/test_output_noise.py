"""Output a user did not ask for (issue 12, item 17): llama.cpp's and the quantiser's console lines, lm-eval's
progress bars, pytest-benchmark's header line, and library versions that take no part in a measurement."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmperf.assets.model import quantize, trained_model_path
from pytest_llmperf.core import fingerprint
from pytest_llmperf.engines.llama_cpp import LlamaCppEngine
from pytest_llmperf.measure.accuracy import evaluate


def test_llama_cpp_engine_prints_nothing_past_verbose_false(capfd: pytest.CaptureFixture[str]) -> None:
    # The trained model's n_ctx_train is 256: llama.cpp warns "n_ctx_seq (2048) > n_ctx_train (256)" from C.
    engine = LlamaCppEngine(model="addition-partial-f16", n_ctx=2048)
    engine.close()
    captured = capfd.readouterr()
    assert "n_ctx_seq" not in captured.err + captured.out
    assert captured.err + captured.out == ""


def test_verbose_true_still_shows_llama_cpp(capfd: pytest.CaptureFixture[str]) -> None:
    engine = LlamaCppEngine(model="addition-partial-f16", n_ctx=2048, verbose=True)
    engine.close()
    assert "n_ctx_seq" in capfd.readouterr().err


def test_quantiser_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    quantize(trained_model_path("addition-partial-f16"), tmp_path / "q.gguf", "q4_0")
    assert (tmp_path / "q.gguf").stat().st_size > 0
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""


def test_scoring_shows_no_progress_bars(capfd: pytest.CaptureFixture[str]) -> None:
    engine = LlamaCppEngine(model="q4_k_m", n_ctx=512)
    try:
        scores = evaluate(engine.lm_eval_model(), ["llmperf_arc", "llmperf_gsm"], limit=3)
    finally:
        engine.close()
    assert scores.metrics
    captured = capfd.readouterr()
    assert "it/s" not in captured.err and "%|" not in captured.err, captured.err[-500:]
    import tqdm

    assert tqdm.tqdm.__name__ == "tqdm"  # restored after scoring


def test_no_pytest_benchmark_header_unless_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    plain = pytester.runpytest("-p", "no:cacheprovider")
    assert not [line for line in plain.outlines if line.startswith("benchmark: ")]
    asked = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-disable")
    assert [line for line in asked.outlines if line.startswith("benchmark: ")]


def test_versions_are_those_of_the_libraries_that_take_part() -> None:
    described = {"backend": "llama_cpp", "engine_config": {}}
    versions = fingerprint.fingerprint(described)["versions"]
    assert {"pytest-llmperf", "llama-cpp-python", "numpy", "python"} <= set(versions)
    assert not {"torch", "vllm", "lm-eval"} & set(versions)
    assert "lm-eval" in fingerprint.fingerprint(described, ("lm-eval",))["versions"]
    # A baseline recorded when every library was listed shows no change for the ones that no longer take part.
    old = {"versions": {**versions, "torch": "2.13.0+cpu", "vllm": None}}
    assert fingerprint.diff(old, {"versions": versions}) == []
    assert fingerprint.diff({"versions": {**versions, "numpy": "1.0"}}, {"versions": versions}) == [
        f"versions.numpy 1.0 -> {versions['numpy']}"
    ]
