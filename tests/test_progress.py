"""Progress of long measurements (``core/progress.py``): the status line's exact writes, context and rate limit,
the runner's and lm-eval's reports, and when the terminal sink is installed (tty, not -q, not an xdist worker)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from pytest_llmperf.core import progress


@pytest.fixture
def shown() -> Iterator[list[str]]:
    texts: list[str] = []
    progress.install(texts.append)
    yield texts
    progress.install(None)
    progress.set_context("")


def test_the_status_line_replaces_and_erases_what_it_wrote() -> None:
    written: list[str] = []
    line = progress.StatusLine(written.append)
    line.show("repetition 1/3")
    line.show("rep 2")
    line.clear()
    line.clear()  # nothing left to erase: writes nothing
    first, n = " [repetition 1/3]", len(" [repetition 1/3]")
    assert written == [first, "\b" * n + " " * n + "\b" * n + " [rep 2]", "\b" * 8 + " " * 8 + "\b" * 8]


def test_reports_carry_the_context_and_are_rate_limited(shown: list[str]) -> None:
    progress.set_context("point cache_type=q8_0 of 3 · ")
    progress.report("repetition 1/2", force=True)
    progress.report("lm-eval loglikelihood 1/400")  # within 1/RATE s of the last: dropped
    progress.report("repetition 2/2", force=True)
    assert shown == ["point cache_type=q8_0 of 3 · repetition 1/2", "point cache_type=q8_0 of 3 · repetition 2/2"]


def test_the_runner_reports_each_repetition(shown: list[str]) -> None:
    from pytest_llmperf.core.workload import Workload
    from pytest_llmperf.engines import create_engine
    from pytest_llmperf.measure.runner import run_workload

    engine = create_engine("llama_cpp", {"n_ctx": 256, "n_threads": 1})
    try:
        run_workload(engine, Workload(n_prompt=8, n_predict=4, requests=1, warmup=0, repetitions=2))
    finally:
        engine.close()
    assert shown == ["repetition 1/2", "repetition 2/2"]


class _Capture:
    def __init__(self) -> None:
        self.suspended = 0

    @contextlib.contextmanager
    def global_and_fixture_disabled(self) -> Iterator[None]:
        self.suspended += 1
        yield


class _Reporter:
    def __init__(self, isatty: bool) -> None:
        self.isatty = isatty


@pytest.mark.parametrize(("isatty", "quiet", "installed"), [(True, False, True), (False, False, False),
                                                            (True, True, False)])
def test_the_terminal_sink_only_on_a_tty_and_not_quiet(isatty: bool, quiet: bool, installed: bool,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    capture = _Capture()
    progress.install_on_terminal(_Reporter(isatty), capture, quiet=quiet)
    try:
        assert progress.active() is installed
        progress.report("repetition 1/1", force=True)
        progress.done()
    finally:
        progress.install(None)
    n = len(" [repetition 1/1]")
    expected = " [repetition 1/1]" + "\b" * n + " " * n + "\b" * n if installed else ""
    assert capsys.readouterr().out == expected
    assert capture.suspended == (2 if installed else 0)  # the show and the erase, each with capture suspended
