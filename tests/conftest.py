"""Shared set-up for the project's own tests."""

from __future__ import annotations

import importlib.util
import os

# In-process pytester runs restore sys.modules afterwards; extension modules cannot be loaded twice in one
# process, so import the engine stack here, before any inner run, and every inner run shares it.
import datasets  # noqa: F401  (pyarrow extension types can be registered once per process)
import filelock  # noqa: F401
import llama_cpp  # noqa: F401
import numpy  # noqa: F401
import psutil  # noqa: F401
import pytest

from pytest_llmperf.assets.model import cache_dir

if importlib.util.find_spec("vllm") is not None:
    # vLLM's CPU build (.ci/run installs it) brings torch: imported once here for the same reason (an in-process
    # run that imported it first would take it out of sys.modules again; a later import then crashed the session).
    # import_vllm leaves this process's environment as it was.
    from pytest_llmperf.engines.vllm import import_vllm

    import_vllm()

# pytester points HOME at a temporary directory; keep every run on the one model cache of this machine
# so the embedded model is built once, not once per inner run.
os.environ.setdefault("LLMPERF_CACHE_DIR", str(cache_dir()))
# The host's speed drifts (docs/noise.md): a test that expects a regression must not get "not judged" because
# the reference loop ran 15% slower than a minute before. Tests of the reference loop turn it back on.
os.environ["LLMPERF_MACHINE_SPEED"] = "off"


@pytest.fixture(autouse=True)
def _not_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Strict mode follows $CI; tests choose it explicitly instead. Each test starts with no history of the
    machine's usual speed (what a recording is held against), so the tests' injected speeds stay their own."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    history = tmp_path_factory.mktemp("speed-history") / "machine-speed.json"
    monkeypatch.setenv("LLMPERF_SPEED_HISTORY", str(history))
