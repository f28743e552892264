"""A test whose engine the machine lacks (its package, its model) is skipped with the reason, and fails in strict
mode (issue 25: the vLLM examples skipped on an environment variable nobody set, strict mode included)."""

from __future__ import annotations

import sys

import pytest

from pytest_llmperf.core.session import parse_models
from pytest_llmperf.engines.cache import EngineCache
from pytest_llmperf.errors import EngineError, LlmperfError

NEEDS_VLLM = """
import pytest

@pytest.mark.perf
def test_vllm(engine_factory):
    engine_factory("vllm", max_num_seqs=4)
"""

BROKEN = """
import pytest

@pytest.mark.perf
def test_broken(engine_factory):
    engine_factory("llama_cpp", model="q4_k_m", no_such_knob=1)
"""


def test_a_missing_engine_package_skips_locally_and_fails_in_strict_mode(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, installed or not
    pytester.makepyfile(test_needs=NEEDS_VLLM)
    local = pytester.runpytest("-m", "perf", "-rs", "-p", "no:cacheprovider")
    local.assert_outcomes(skipped=1)
    local.stdout.fnmatch_lines(["SKIPPED*backend 'vllm' needs vLLM*install-vllm-cpu.sh*pytest-llmperf[[]vllm]*"])
    strict = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--llmperf-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*[[]strict] test_needs.py::test_vllm: backend 'vllm' needs vLLM*"])


def test_a_missing_model_skips_locally_and_fails_in_strict_mode(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM importable (the fake shaped like it, in this process: pytester runs in-process) and no model given:
    skipped naming the option that gives one; given with ``--llmperf-model vllm=DIR``, the engine is built."""
    from tests import fake_vllm

    fake_vllm.install(monkeypatch)
    pytester.makepyfile(test_needs=NEEDS_VLLM)
    local = pytester.runpytest("-m", "perf", "-rs", "-p", "no:cacheprovider")
    local.assert_outcomes(skipped=1)
    local.stdout.fnmatch_lines(["SKIPPED*backend 'vllm' needs a model*--llmperf-model vllm=DIR*"])
    assert not fake_vllm.LLM.instances
    strict = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--llmperf-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*[[]strict] test_needs.py::test_vllm: backend 'vllm' needs a model*"])
    given = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider", "--llmperf-model", "vllm=/models/tiny")
    given.assert_outcomes(passed=1)
    assert fake_vllm.LLM.instances[-1].model == "/models/tiny"


def test_an_engine_built_wrong_is_an_error_not_a_skip(pytester: pytest.Pytester) -> None:
    """Only what the machine lacks skips: a misspelled knob fails the test, strict or not."""
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest("-m", "perf", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*no_such_knob*"])


def test_models_by_backend() -> None:
    assert parse_models(["vllm = /models/llama", "q4_k_m", ""], "--llmperf-model") == {
        "vllm": "/models/llama", "": "q4_k_m"}
    assert parse_models(["/models/a=b.gguf"], "x") == {"": "/models/a=b.gguf"}  # a path with '=' is a model
    with pytest.raises(LlmperfError, match="--llmperf-model: 'vllm =' names no model"):
        parse_models(["vllm ="], "--llmperf-model")
    with pytest.raises(LlmperfError, match="ini llmperf_model: two models for backend 'vllm'"):
        parse_models(["vllm=a", "vllm=b"], "ini llmperf_model")
    with pytest.raises(EngineError, match="unknown backend 'vlm'; available backends: llama_cpp, openai, vllm"):
        EngineCache("llama_cpp", {"vlm": "x"})
    cache = EngineCache("llama_cpp", {"vllm": "/models/llama", "": "f16"})
    assert cache.models == {"vllm": "/models/llama", "": "f16"}
