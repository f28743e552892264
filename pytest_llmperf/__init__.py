"""pytest-llmperf: LLM inference performance as tests that can fail.

The public names are importable from here; heavy engine libraries are imported only when an engine is built.

PYTEST_DONT_REWRITE: the plugin's own asserts stay plain Python (they are not tests). Without this marker an
in-process pytester run (the project's tests) finds the package already imported and pytest >= 9.2 warns
that it cannot rewrite it, a warning in every such run.
"""

from __future__ import annotations

from typing import Any

from pytest_llmperf.core.workload import Workload
from pytest_llmperf.errors import BaselineError, EngineError, LlmperfError

__all__ = ["BaselineError", "EngineError", "KvShape", "LlmperfError", "Workload", "__version__", "kv_cache_bytes",
           "paired_test", "reference_of"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use: the fidelity code needs nothing heavy, but a plugin import should not pay for it.
    if name in ("kv_cache_bytes", "KvShape"):
        from pytest_llmperf.core import kv_cache

        return getattr(kv_cache, name)
    if name == "paired_test":
        from pytest_llmperf.core.paired import paired_test

        return paired_test
    if name == "reference_of":
        from pytest_llmperf.measure.fidelity import reference_of

        return reference_of
    raise AttributeError(f"module 'pytest_llmperf' has no attribute {name!r}")
