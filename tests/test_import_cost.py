"""Installing the plugin must not make every pytest run import the heavy engine libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("llama_cpp", "lm_eval", "pynvml", "vllm", "torch", "numpy", "gguf", "scipy", "jsonschema")


def test_plugin_import_loads_no_heavy_module() -> None:
    code = (
        "import json, sys; import pytest_llmperf.plugin, pytest_llmperf; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded == []


def test_pytest_run_without_perf_tests_loads_no_heavy_module(pytester) -> None:
    pytester.makepyfile(
        f"""
        import sys
        def test_plain():
            assert [m for m in {HEAVY!r} if m in sys.modules] == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_perf_test_without_scorer_does_not_import_lm_eval(pytester) -> None:
    pytester.makepyfile(
        """
        import sys
        import pytest

        @pytest.mark.perf
        def test_speed(engine_factory, llmperf):
            engine = engine_factory("llama_cpp", n_threads=2, n_ctx=256)
            llmperf.check({"e2e_p99": 0.5})
            assert "llama_cpp" in sys.modules and "lm_eval" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "perf")
    result.assert_outcomes(passed=1)
