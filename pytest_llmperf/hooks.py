"""Hooks pytest-llmperf calls, for plugins and conftest.py files to implement."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_llmperf_fingerprint(config: pytest.Config, nodeid: str, fingerprint: dict[str, Any]) -> None:
    """Add or change fields of the fingerprint stored with ``nodeid``'s baseline (edit ``fingerprint`` in place).

    Every field takes part in change attribution: a differing value is listed beside the metric deltas.
    Keep volatile values (timestamps, hostnames) and secrets out.
    """
