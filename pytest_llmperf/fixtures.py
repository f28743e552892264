"""The plugin's fixtures: each hands a test a pytest-free object (``engines/cache.py``, ``measure/perf_check.py``,
``measure/lm_eval_scorer.py``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_llmperf.core.record import TestRecord
    from pytest_llmperf.core.session import LlmperfSession
    from pytest_llmperf.core.tolerance import ToleranceTable
    from pytest_llmperf.engines.cache import EngineCache, EngineFactory
    from pytest_llmperf.measure.gpu import NvmlTracker
    from pytest_llmperf.measure.lm_eval_scorer import LmEvalScorer
    from pytest_llmperf.measure.perf_check import PerfCheck

session_key = pytest.StashKey["LlmperfSession"]()
record_key = pytest.StashKey["TestRecord"]()


class PytestLlmperfWarning(UserWarning):
    """A perf check that passed with something to act on (a new baseline, an improvement, a relaunch)."""


def record_of(item: pytest.Item) -> TestRecord:
    """The record of ``item``'s test (made on first use)."""
    from pytest_llmperf.core.record import TestRecord
    from pytest_llmperf.core.session import LlmperfSession  # noqa: F401  (in a StashKey[...] string)

    if record_key not in item.stash:
        item.stash[record_key] = TestRecord(item.nodeid)
    return item.stash[record_key]


def warn_at(item: pytest.Item, message: str) -> None:
    """Warn with the test's own location (not this plugin's) as the place to look."""
    filename, lineno, _ = item.location
    warnings.warn_explicit(
        PytestLlmperfWarning(message), PytestLlmperfWarning, str(item.config.rootpath / filename), (lineno or 0) + 1
    )


def tolerance_table(item: pytest.Item, session: LlmperfSession) -> ToleranceTable:
    """The session's tolerances under the test's ``perf_tolerance`` markers (the closest one wins)."""
    from pytest_llmperf.core.markers import marker_tolerances

    markers = reversed(list(item.iter_markers("perf_tolerance")))
    table = marker_tolerances([(marker.args, marker.kwargs) for marker in markers], item.nodeid)
    return session.tolerances.with_layer(f"marker perf_tolerance on {item.nodeid}", table) if table else \
        session.tolerances


def study_of(item: pytest.Item, session: LlmperfSession) -> dict[str, Any] | None:
    """The study ``item`` is a point of (``core/studies.point_info``), None when it has no ``perf_study`` marker."""
    from pytest_llmperf.core.session_studies import point_info, study_id

    if (marker := item.get_closest_marker("perf_study")) is None:
        return None
    spec = getattr(item, "callspec", None)
    return point_info(item.nodeid, marker.kwargs, spec.params if spec else {}, spec.indices if spec else {},
                      session.study_sizes.get(study_id(item.nodeid), 1))


@pytest.fixture(scope="session")
def _llmperf_engines(pytestconfig: pytest.Config) -> Iterator[EngineCache]:
    from pytest_llmperf.engines.cache import EngineCache

    session = pytestconfig.stash[session_key]
    cache = EngineCache(session.backend, session.models)
    yield cache
    cache.close_all()


@pytest.fixture
def engine_factory(_llmperf_engines: EngineCache) -> EngineFactory:
    """Build engines by backend and config, cached per session (docs/engines.md)."""
    from pytest_llmperf.engines.cache import EngineFactory

    return EngineFactory(_llmperf_engines, PytestLlmperfWarning)


@pytest.fixture
def llmperf(request: pytest.FixtureRequest, _llmperf_engines: EngineCache) -> PerfCheck:
    """Measure on engines; every call adds to this test's record, judged against its baseline when it ends."""
    from pytest_llmperf.measure.perf_check import PerfCheck

    session, item = request.config.stash[session_key], request.node
    return PerfCheck(record_of(item), session, _llmperf_engines, tolerance_table(item, session))


@pytest.fixture
def lm_eval_scorer(llmperf: PerfCheck) -> LmEvalScorer:
    """Score lm-eval tasks on an engine; the accuracy joins this test's record."""
    from pytest_llmperf.measure.lm_eval_scorer import LmEvalScorer

    return LmEvalScorer(llmperf)


@pytest.fixture
def nvml_tracker() -> Callable[..., NvmlTracker]:
    """``with nvml_tracker(interval_s=0.05, pids=None) as gpu: ...`` then ``gpu.metrics(generated_tokens)``;
    without NVML or a visible GPU ``gpu.available`` is False, ``gpu.reason`` says why, every metric is None."""
    from pytest_llmperf.measure.gpu import NvmlTracker

    return NvmlTracker
