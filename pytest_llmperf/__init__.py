"""pytest-llmperf: LLM inference performance as tests that can fail.

The public names are importable from here; heavy engine libraries are imported only when an engine is built.
"""

from __future__ import annotations

from pytest_llmperf.errors import BaselineError, EngineError, LlmperfError
from pytest_llmperf.workload import Workload

__all__ = ["BaselineError", "EngineError", "LlmperfError", "Workload", "__version__"]
__version__ = "0.1.0"
