"""pytest wiring only: options, ini keys, markers, hooks and the terminal summary; the fixtures are in
``fixtures.py``. The work is done by the pytest-free packages (``core``, ``measure``, ``engines``, ``reports``),
imported lazily so a project that installs the plugin but measures nothing pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf import hooks
from pytest_llmperf.errors import EngineUnavailable, LlmperfError
from pytest_llmperf.fixtures import (  # noqa: F401  (fixtures are found as this plugin's attributes)
    PytestLlmperfWarning,
    _llmperf_engines,
    engine_factory,
    llmperf,
    lm_eval_scorer,
    nvml_tracker,
    record_key,
    session_key,
    study_of,
    tolerance_table,
    warn_at,
)

if TYPE_CHECKING:
    from pytest_llmperf.core.record import TestRecord
    from pytest_llmperf.core.session import LlmperfSession

run_key = pytest.StashKey[dict[str, Any]]()  # which part of the suite ran (``reports/files.run_selection``)

def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    from pytest_llmperf.core.session import DEFAULT_GATE, INI_DEFAULTS, OPTIONS

    group = parser.getgroup("llmperf", "LLM inference performance (pytest-llmperf)")
    for option, ini_help, settings in OPTIONS:
        ini, extra = option.removeprefix("--").replace("-", "_"), dict(settings)
        group.addoption(option, help=f"{extra.pop('help', ini_help)}{f' (ini {ini})' if ini_help else ''}", **extra)
        if ini_help:
            parser.addini(ini, ini_help, default=INI_DEFAULTS[ini])
    group.addoption("--llmperf-no-strict", action="store_false", dest="llmperf_strict", help="turn strict mode off")
    parser.addini("llmperf_tolerances", "lines of 'metric-or-pattern = tolerance'", type="linelist", default=[])
    parser.addini("llmperf_gate", "metrics checked against the baseline", type="linelist", default=list(DEFAULT_GATE))
    parser.addini("llmperf_gpus_per_worker", "xdist: GPUs per worker (auto, a number, off)", default="auto")


class _BenchmarkHeaderFilter:
    """Drops pytest-benchmark's header line (it comes with this plugin's dependency, unasked) unless a
    ``--benchmark-*`` option shows that the run uses pytest-benchmark."""

    @pytest.hookimpl(wrapper=True)
    def pytest_report_header(self, config: pytest.Config) -> Generator[None, list[Any], list[Any]]:
        lines = yield
        if any(str(arg).startswith("--benchmark") for arg in config.invocation_params.args):
            return lines
        return [line for line in lines if not (isinstance(line, str) and line.startswith("benchmark: "))]


def pytest_configure(config: pytest.Config) -> None:
    from pytest_llmperf.core.markers import MARKERS
    from pytest_llmperf.core.session import build_session

    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    config.pluginmanager.register(_BenchmarkHeaderFilter(), "llmperf-benchmark-header")
    try:
        session = build_session(config.getoption, config.getini, config.rootpath, config.invocation_params.dir)
        if session.report is not None:  # checked now: a report that cannot be written fails before any test
            from pytest_llmperf.reports.files import check_report_path

            check_report_path(session.report, "--llmperf-report" if config.getoption("llmperf_report") else
                              "ini llmperf_report")
        config.stash[session_key] = session
    except LlmperfError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_report_header(config: pytest.Config) -> str | None:
    if (session := config.stash.get(session_key, None)) is None:
        return None
    mode = "update" if session.update else "check"
    return f"llmperf: baselines={session.baseline_dir} mode={mode} strict={session.strict}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before -m/-k deselect anything: every study's points, the perf tests, and baseline files of wholly collected
    modules that no collected test owns (``--lf`` collects parts of modules: nothing is judged then)."""
    from pytest_llmperf.core.baseline import stale_in_whole_modules
    from pytest_llmperf.core.session_studies import study_sizes

    if (llmperf_session := config.stash.get(session_key, None)) is None:
        return
    config.stash[run_key] = {"perf": sum(bool(item.get_closest_marker("perf")) for item in items)}
    llmperf_session.study_sizes = study_sizes(item.nodeid for item in items if item.get_closest_marker("perf_study"))
    if not config.getoption("lf", False):
        whole = [Path(config.invocation_params.dir, arg).resolve() for arg in config.args if "::" not in arg]
        tests = [(item.nodeid, item.path.resolve()) for item in items]
        llmperf_session.stale.update(stale_in_whole_modules(llmperf_session.baseline_dir, tests, whole))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Progress of long measurements on a terminal: not under -q, not piped, not on an xdist worker."""
    from pytest_llmperf.core import progress

    plugins = session.config.pluginmanager
    progress.install_on_terminal(plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager"),
                                 quiet=session.config.get_verbosity() < 0 or hasattr(session.config, "workerinput"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a pytest-xdist worker that collected perf or gpu tests, pin the worker to its own GPUs: after
    collection (a run without such tests never touches NVML), before the first test (before CUDA starts)."""
    from pytest_llmperf.core.hardware import worker_environment

    workerinput, llmperf_session = getattr(session.config, "workerinput", None), session.config.stash[session_key]
    run = session.config.stash.setdefault(run_key, {"perf": 0})  # (the perf tests that -m, -k, --lf left out)
    run["deselected_perf"] = run["perf"] - sum(bool(item.get_closest_marker("perf")) for item in session.items)
    if workerinput is not None and any(item.get_closest_marker("gpu") or item.get_closest_marker("perf")
                                       for item in session.items):
        os.environ.update(worker_environment(str(workerinput["workerid"]), int(workerinput["workercount"]),
                                             llmperf_session.gpus_per_worker))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Bad or misspelled markers fail the test before anything is measured, naming the marker and the value;
    a gpu(...) test without its GPUs is skipped (failed with --llmperf-require-gpu or in strict mode)."""
    from pytest_llmperf.core.hardware import gpu_requirement, missing_gpus
    from pytest_llmperf.core.markers import check_markers

    registered = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in item.config.getini("markers")}
    session = item.config.stash.get(session_key, None)
    try:
        check_markers([(m.name, m.args, m.kwargs) for m in item.iter_markers()], registered, item.nodeid)
        if session is not None:
            tolerance_table(item, session)
            from pytest_llmperf.core import progress

            study = study_of(item, session)  # (a point's progress says which point; any other test's says nothing)
            progress.set_context(f"point {study['label']} of {study['size']} · " if study else "")
        gpu = item.get_closest_marker("gpu")
        missing = missing_gpus(*gpu_requirement(gpu.args, gpu.kwargs, item.nodeid)) if gpu else None
    except LlmperfError as error:
        raise pytest.fail.Exception(str(error), pytrace=False) from None
    if missing is not None:
        if session is not None and (session.require_gpu or session.strict):
            flag = "--llmperf-require-gpu" if session.require_gpu else "strict"
            pytest.fail(f"[{flag}] {item.nodeid} {missing}", pytrace=False)
        pytest.skip(missing)


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    """Judge the test's record once the test body is done: all regressions in one failure, one baseline write
    (only for a test that passed)."""
    ended = "failed"
    try:
        result = yield
        ended = "passed"
        return result
    except (pytest.skip.Exception, EngineUnavailable) as error:
        ended = "skipped"  # what this machine lacks (a package, a model): skipped with the reason; strict fails
        if isinstance(error, EngineUnavailable) and pyfuncitem.config.stash[session_key].strict:
            raise pytest.fail.Exception(f"[strict] {pyfuncitem.nodeid}: {error}", pytrace=False) from None
        raise error if isinstance(error, pytest.skip.Exception) else pytest.skip.Exception(str(error)) from None
    finally:
        if ended != "skipped" and (record := pyfuncitem.stash.get(record_key, None)) is not None and record.parts:
            _judge(pyfuncitem, record, passed=ended == "passed")


def _judge(item: pytest.Function, record: TestRecord, passed: bool) -> None:
    __tracebackhide__ = True
    from pytest_llmperf.core.outcome import consequence, write_pending
    from pytest_llmperf.core.record import judge

    session: LlmperfSession = item.config.stash[session_key]

    def edit(fingerprint: dict[str, Any]) -> None:
        item.config.hook.pytest_llmperf_fingerprint(config=item.config, nodeid=item.nodeid, fingerprint=fingerprint)

    table = tolerance_table(item, session)
    try:
        from pytest_llmperf.measure.quality import SpeedHistory, wait_until_quiet

        outcome = judge(record, session.baseline_dir, table, update=session.update,
                        confirm=session.confirm if passed else 0, edit=edit, strict=session.strict,
                        wait_until_quiet=lambda reference: wait_until_quiet(reference, session.busy_wait_s),
                        speed_history=SpeedHistory())
        write_pending(outcome, test_passed=passed)
    except LlmperfError as error:
        if not passed:
            return  # the test's own failure says what went wrong
        raise pytest.fail.Exception(str(error), pytrace=False) from None
    finally:
        session.scaling.extend(results[-1] for results in record.scaling)
    outcome.study = study_of(item, session)
    session.outcomes.append(outcome)
    item.user_properties += [(f"llmperf.{name}", value) for name, value in outcome.measured.items()]
    item.user_properties.append(("llmperf.status", outcome.status.value))
    item.user_properties += [("llmperf.disturbed", outcome.disturbed)] if outcome.disturbed else []
    if (benchmark := item.funcargs.get("benchmark")) is not None:  # pytest-benchmark's extra_info, its JSON
        benchmark.extra_info.update({f"llmperf.{name}": outcome.measured[name] for name in outcome.gated})  # type: ignore[attr-defined]
    if passed:
        action = consequence(outcome, session.strict)
        if action.fail is not None:
            pytest.fail(action.fail, pytrace=False)
        if action.skip is not None:
            pytest.skip(action.skip)
        for message in action.warnings:
            warn_at(item, message)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """An LlmperfError from a measuring call fails the test with its message alone (it names what is wrong)."""
    report = yield
    if call.when == "call":
        from pytest_llmperf.core import progress

        progress.done()
    if call.excinfo is not None and call.excinfo.errisinstance(LlmperfError) and report.failed:
        report.longrepr = str(call.excinfo.value)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config, llmperf_session = session.config, session.config.stash.get(session_key, None)
    if llmperf_session is None:
        return
    if hasattr(config, "workerinput"):  # an xdist worker: the controller merges it in pytest_testnodedown
        from pytest_llmperf.reports.json_report import worker_output

        output = worker_output(llmperf_session, config.stash.get(run_key, {}))
        config.workeroutput.update(output)  # type: ignore[attr-defined]
        return
    if llmperf_session.outcomes:  # studies are judged as a whole, once every worker's points are in
        from pytest_llmperf.core.session_studies import judge_session

        if judge_session(llmperf_session) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if llmperf_session.outcomes or llmperf_session.report is not None:  # (a partial run merges into the report)
        from pytest_llmperf.reports.files import run_selection, try_write_reports

        if not try_write_reports(llmperf_session, run_selection(session, config.stash.setdefault(run_key, {}))):
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    for path in llmperf_session.stale if llmperf_session.prune_stale else ():
        path.unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: fold a finished worker's outcomes into the controller's session."""
    from pytest_llmperf.reports.json_report import merge_worker_output

    if (session := node.config.stash.get(session_key, None)) is not None:
        merge_worker_output(session, getattr(node, "workeroutput", {}), node.config.stash.setdefault(run_key, {}))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from pytest_llmperf.reports.terminal import summary_lines

    session, run = config.stash.get(session_key, None), config.stash.get(run_key, {})
    lines = summary_lines(session, terminalreporter.stats.get("skipped", []), run.get("partial", [])) if session else []
    if lines:
        terminalreporter.write_sep("=", "llmperf")
        for line in lines:
            terminalreporter.write_line(line, red=line.startswith("ERROR "))
