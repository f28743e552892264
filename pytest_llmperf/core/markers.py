"""The plugin's markers, checked without pytest: ``perf``, ``perf_tolerance(...)``, ``gpu(...)`` (``core/hardware``),
``perf_study(...)`` (``core/operating_point``).

Each check takes a marker's name, args and kwargs and raises an ``LlmperfError`` naming the test and the value.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from pytest_llmperf.errors import LlmperfError

MARKERS = {
    "perf": "a performance test (select with `pytest -m perf`)",
    "perf_tolerance": "perf_tolerance(patterns=None, **metric_tolerances): per-metric tolerances for this test",
    "gpu": "gpu(count=1, min_vram_gib=None): needs GPUs; skipped without them (strict: failed)",
    "perf_study": "perf_study(axis, maximise=|minimise=, constraints=[...], accuracy_within=None, plateau=None, "
                  "tie=0.01, fail_on_change=False): the parametrized points form one study with an operating point",
}


def check_markers(markers: Iterable[tuple[str, tuple[Any, ...], Mapping[str, Any]]], registered: set[str],
                  where: str) -> None:
    """A marker that is not registered but close to one of ours (its settings would silently not apply), or a
    ``perf`` marker with arguments, raises."""
    for name, args, kwargs in markers:
        close = difflib.get_close_matches(name, list(MARKERS), n=1, cutoff=0.8)
        if name not in registered and close:
            raise LlmperfError(f"{where}: unknown marker {name!r}; did you mean {close[0]!r}? (its settings would "
                               "not apply)")
        if name == "perf_study":
            from pytest_llmperf.core.operating_point import parse_study

            if args:
                raise LlmperfError(f"{where}: perf_study takes keywords only (axis=..., maximise=...), got {args!r}")
            parse_study(kwargs, where)
        if name == "perf" and (args or kwargs):
            raise LlmperfError(f"{where}: the perf marker takes no arguments, got {args or ''}{kwargs or ''}; put "
                               "tolerances in perf_tolerance(...)")


def marker_tolerances(markers: Iterable[tuple[tuple[Any, ...], Mapping[str, Any]]], where: str) -> dict[str, object]:
    """The tolerances of ``perf_tolerance`` markers, farthest first (the closest wins)."""
    table: dict[str, object] = {}
    for args, kwargs in markers:
        if len(args) > 1 or (args and not isinstance(args[0], Mapping)):
            raise LlmperfError(f"{where}: perf_tolerance takes one mapping of pattern -> tolerance and "
                               f"metric=tolerance keywords, got {args!r}")
        table.update(args[0] if args else {})
        table.update(kwargs)
    return table
