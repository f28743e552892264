"""pytest wiring only: options, ini keys, markers, fixtures, hooks and the terminal summary.

The work is done by the pytest-free core (``runner``, ``check``, ``baseline``, ``compare``, ``report``),
imported lazily so a project that installs the plugin but measures nothing pays nothing.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_llmperf.errors import LlmperfError

if TYPE_CHECKING:
    from pytest_llmperf.accuracy import AccuracyResult
    from pytest_llmperf.check import CheckOutcome
    from pytest_llmperf.engines import Engine
    from pytest_llmperf.factory import EngineCache
    from pytest_llmperf.fidelity import FidelityResult
    from pytest_llmperf.gpu import NvmlTracker
    from pytest_llmperf.runner import PerfResult
    from pytest_llmperf.scaling import ScalingResult
    from pytest_llmperf.tolerance import ToleranceTable
    from pytest_llmperf.workload import Workload

#: Metrics checked against the baseline unless the ini key ``llmperf_gate`` or ``measure(gate=...)`` say
#: otherwise. Every other metric is still measured and available on the result.
DEFAULT_GATE = ("completion_tok_s", "total_tok_s", "e2e_p99", "ttft_p99", "tpot_p50", "rss_peak_gib")

#: A fresh measurement for a regression to be confirmed by: gated metrics, samples, warnings.
Remeasured = tuple[Mapping[str, "float | None"], Mapping[str, list[float]], list[str]]


def _failure(error: Exception | str) -> BaseException:
    """The test failure for ``error``: its message alone, raised ``from None`` by the caller.

    ``pytest.fail`` inside an ``except`` block would chain the caught error, and pytest prints a chained
    message twice ("During handling of the above exception ...").
    """
    return pytest.fail.Exception(str(error), pytrace=False)


class PytestLlmperfWarning(UserWarning):
    """A perf check that passed with something to act on (a new baseline, an improvement)."""


@dataclass
class LlmperfSession:
    """Per-run settings and the outcomes collected for the summary (kept in ``config.stash``)."""

    baseline_dir: Path
    update: bool
    strict: bool
    tolerances: ToleranceTable
    gate: tuple[str, ...]
    backend: str
    model: str | None
    report: Path | None = None
    prune_stale: bool = False
    confirm: int = 1
    require_gpu: bool = False
    outcomes: list[CheckOutcome] = field(default_factory=list)
    stale: set[Path] = field(default_factory=set)
    scaling: list[ScalingResult] = field(default_factory=list)
    #: Problems of the session itself (a report that could not be written), printed in the summary.
    errors: list[str] = field(default_factory=list)


session_key = pytest.StashKey[LlmperfSession]()
#: ``--update-baselines`` outcomes of one test whose baseline is written only once the test has passed.
_pending_key = pytest.StashKey[list["CheckOutcome"]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Write the baselines a test prepared under ``--update-baselines`` once it has passed; a failing test
    leaves its file as it was. A baseline that cannot be written fails the test, naming the file."""
    report = yield
    pending = item.stash.get(_pending_key, [])
    if not pending or (report.passed and report.when == "setup"):
        return report
    from pytest_llmperf.check import write_pending

    del item.stash[_pending_key]
    problems = []
    for outcome in pending:
        try:
            write_pending(outcome, test_passed=report.passed)
        except LlmperfError as error:
            outcome.message = str(error)
            problems.append(str(error))
    if problems:
        report.outcome = "failed"
        report.longrepr = "\n".join(problems)
    return report


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_llmperf import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmperf", "LLM inference performance (pytest-llmperf)")
    group.addoption(
        "--update-baselines",
        action="store_true",
        default=False,
        help="re-measure the selected perf tests and rewrite their baseline files",
    )
    group.addoption("--llmperf-baseline-dir", metavar="DIR", help="baseline directory (ini llmperf_baseline_dir)")
    group.addoption(
        "--llmperf-strict",
        action="store_true",
        default=None,
        help="fail instead of skip/warn on a missing or not-comparable baseline (default: on when $CI is set)",
    )
    group.addoption("--llmperf-no-strict", action="store_false", dest="llmperf_strict", help="turn strict mode off")
    group.addoption(
        "--llmperf-tolerance",
        action="append",
        default=[],
        metavar="METRIC=TOL",
        help="tolerance for a metric or glob pattern, e.g. 'completion_tok_s=10%%' (repeatable)",
    )
    group.addoption(
        "--llmperf-prune-stale",
        action="store_true",
        default=False,
        help="delete the stale baseline files listed at the end of the session",
    )
    group.addoption(
        "--llmperf-report",
        metavar="PATH",
        help="write a JSON report to PATH and a Markdown report beside it (.md) (ini llmperf_report)",
    )
    group.addoption(
        "--llmperf-confirm",
        metavar="N",
        type=int,
        default=None,
        help="re-measure a regressed test up to N times; it fails only if every measurement regresses "
        "(default 1; 0 fails on the first; ini llmperf_confirm)",
    )
    group.addoption(
        "--llmperf-require-gpu",
        action="store_true",
        default=False,
        help="a test marked gpu(...) whose GPUs are missing fails instead of skipping (also in strict mode)",
    )
    group.addoption("--llmperf-backend", metavar="NAME", help="engine backend for the whole run (ini llmperf_backend)")
    group.addoption(
        "--llmperf-model",
        metavar="MODEL",
        help="model for engines that name none: a GGUF path or an embedded variant (f16, q8_0, q4_k_m)",
    )
    parser.addini("llmperf_baseline_dir", "baseline directory, relative to the rootdir", default="baselines")
    parser.addini("llmperf_strict", "strict mode: true/false (default: on when $CI is set)", default="")
    parser.addini("llmperf_tolerances", "lines of 'metric-or-pattern = tolerance'", type="linelist", default=[])
    parser.addini("llmperf_gate", "metrics checked against the baseline", type="linelist", default=list(DEFAULT_GATE))
    parser.addini("llmperf_report", "JSON report path (Markdown written beside it)", default="")
    parser.addini("llmperf_confirm", "re-measurements that must confirm a regression (default 1)", default="1")
    parser.addini(
        "llmperf_gpus_per_worker",
        "under pytest-xdist, GPUs pinned to each worker: auto (visible GPUs // workers), a number, or off",
        default="auto",
    )
    parser.addini("llmperf_backend", "default engine backend", default="llama_cpp")
    parser.addini("llmperf_model", "default model for engines that name none", default="")


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no", "off")


def _strict(config: pytest.Config) -> bool:
    option = config.getoption("llmperf_strict")
    if option is not None:
        return bool(option)
    ini = str(config.getini("llmperf_strict"))
    if ini.strip():
        if ini.strip().lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise pytest.UsageError(f"ini llmperf_strict: expected true or false, got {ini!r}")
        return _truthy(ini)
    return _truthy(os.environ.get("CI", ""))


def _build_session(config: pytest.Config) -> LlmperfSession:
    from pytest_llmperf.metrics import metric_spec
    from pytest_llmperf.tolerance import DEFAULT_TOLERANCES, ToleranceTable, parse_assignments

    baseline_dir = config.getoption("llmperf_baseline_dir") or config.getini("llmperf_baseline_dir")
    gate = tuple(config.getini("llmperf_gate"))
    for name in gate:
        metric_spec(name)
    option_source, ini_source = "--llmperf-tolerance", "ini llmperf_tolerances"
    tolerances = ToleranceTable(
        [
            (option_source, parse_assignments(config.getoption("llmperf_tolerance"), option_source)),
            (ini_source, parse_assignments(config.getini("llmperf_tolerances"), ini_source)),
            ("built-in default", DEFAULT_TOLERANCES),
        ]
    )
    report = config.getoption("llmperf_report") or config.getini("llmperf_report")
    if report:
        from pytest_llmperf.report import check_report_path

        source = "--llmperf-report" if config.getoption("llmperf_report") else "ini llmperf_report"
        check_report_path(Path(config.invocation_params.dir, report), source)
    confirm = config.getoption("llmperf_confirm")
    if confirm is None:
        ini_confirm = str(config.getini("llmperf_confirm")).strip()
        if not ini_confirm.isdigit():
            raise LlmperfError(f"ini llmperf_confirm: expected a whole number >= 0, got {ini_confirm!r}")
        confirm = int(ini_confirm)
    if confirm < 0:
        raise LlmperfError(f"--llmperf-confirm: expected a whole number >= 0, got {confirm}")
    return LlmperfSession(
        confirm=confirm,
        require_gpu=bool(config.getoption("llmperf_require_gpu")),
        report=Path(config.invocation_params.dir, report) if report else None,
        prune_stale=bool(config.getoption("llmperf_prune_stale")),
        baseline_dir=Path(config.rootpath, baseline_dir),
        update=bool(config.getoption("update_baselines")),
        strict=_strict(config),
        tolerances=tolerances,
        gate=gate,
        backend=config.getoption("llmperf_backend") or config.getini("llmperf_backend"),
        model=config.getoption("llmperf_model") or config.getini("llmperf_model") or None,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "perf: a performance test (select with `pytest -m perf`)")
    config.addinivalue_line(
        "markers",
        "perf_tolerance(patterns=None, **metric_tolerances): per-metric tolerances for this test, "
        "e.g. perf_tolerance(completion_tok_s='10%', e2e_p99='50ms') or perf_tolerance({'*_tok_s': '20%'})",
    )
    config.addinivalue_line(
        "markers",
        "gpu(count=1, min_vram_gib=None): needs this many visible GPUs with at least this much memory each; "
        "skipped otherwise, failed with --llmperf-require-gpu or in strict mode",
    )
    config.pluginmanager.register(_BenchmarkHeaderFilter(), "llmperf-benchmark-header")
    try:
        config.stash[session_key] = _build_session(config)
        _gpus_per_worker(config)  # validated up front, used after collection
    except LlmperfError as error:
        raise pytest.UsageError(str(error)) from None


class _BenchmarkHeaderFilter:
    """Drops pytest-benchmark's header line (it comes with this plugin's dependency, unasked) unless a
    ``--benchmark-*`` option shows that the run uses pytest-benchmark."""

    @pytest.hookimpl(wrapper=True)
    def pytest_report_header(self, config: pytest.Config) -> Generator[None, list[Any], list[Any]]:
        lines = yield
        if any(str(arg).startswith("--benchmark") for arg in config.invocation_params.args):
            return lines
        return [line for line in lines if not (isinstance(line, str) and line.startswith("benchmark: "))]


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(session_key, None)
    if session is None:
        return None
    mode = "update" if session.update else "check"
    return f"llmperf: baselines={session.baseline_dir} mode={mode} strict={session.strict}"


@pytest.fixture(scope="session")
def _llmperf_engines(pytestconfig: pytest.Config) -> Iterator[EngineCache]:
    from pytest_llmperf.factory import EngineCache

    session = pytestconfig.stash[session_key]
    cache = EngineCache(session.backend, session.model)
    yield cache
    cache.close_all()


class EngineFactory:
    """``engine_factory(backend=None, **config)``: an engine, cached for the session by its config."""

    def __init__(self, cache: EngineCache) -> None:
        self._cache = cache

    def __call__(self, backend: str | None = None, **config: Any) -> Engine:
        __tracebackhide__ = True
        try:
            engine = self._cache.get(backend, **config)
        except LlmperfError as error:
            raise _failure(error) from None
        while self._cache.relaunched:
            warnings.warn(PytestLlmperfWarning(self._cache.relaunched.pop(0)), stacklevel=2)
        return engine


@pytest.fixture
def engine_factory(_llmperf_engines: EngineCache) -> EngineFactory:
    """Build engines by backend and config; see the README for the backends and their knobs."""
    return EngineFactory(_llmperf_engines)


def _marker_tolerances(item: pytest.Item) -> dict[str, object]:
    table: dict[str, object] = {}
    # Closest marker last, so it wins.
    for marker in reversed(list(item.iter_markers("perf_tolerance"))):
        if len(marker.args) > 1 or (marker.args and not isinstance(marker.args[0], Mapping)):
            raise LlmperfError(
                f"{item.nodeid}: perf_tolerance takes one mapping of pattern -> tolerance and metric=tolerance "
                f"keywords, got {marker.args!r}"
            )
        if marker.args:
            table.update(marker.args[0])
        table.update(marker.kwargs)
    return table


class PerfCheck:
    """The ``llmperf`` fixture: measure a workload on an engine and check it against this test's baseline."""

    def __init__(self, request: pytest.FixtureRequest, session: LlmperfSession, engines: EngineCache) -> None:
        self._request = request
        self._session = session
        self._engines = engines
        self._checked = False

    def measure(
        self,
        engine: Engine,
        workload: Workload | None = None,
        *,
        gate: Sequence[str] | None = None,
        tolerances: Mapping[str, object] | None = None,
        track_gpu: bool = False,
        check: bool = True,
    ) -> PerfResult:
        """Run ``workload`` (default ``Workload()``) on ``engine``, check the gated metrics, return the result.

        A regression fails the test (``check=False``: measure only); the metrics are also on the result. ``track_gpu``
        samples the GPUs with ``NvmlTracker`` during the run, adds its metrics (``mem_max_gib``,
        ``mem_mean_gib``, ``mem_gpu<N>_gib``, ``mem_process_gib``, ``gpu_*``) to the result and gates the first
        two by default; without NVML or a GPU they are None (unavailable), never 0.
        """
        __tracebackhide__ = True
        from pytest_llmperf.fingerprint import fingerprint
        from pytest_llmperf.gpu import NvmlTracker
        from pytest_llmperf.runner import run_workload
        from pytest_llmperf.workload import Workload

        workload = workload or Workload()
        gate_names = gate or (*self._session.gate, *(("mem_max_gib", "mem_mean_gib") if track_gpu else ()))
        results: list[PerfResult] = []

        def run() -> Remeasured:
            tracker = NvmlTracker() if track_gpu else contextlib.nullcontext()
            with _measurement_lock(), tracker:
                results.append(run_workload(engine, workload, self._engines.rss_base_bytes(engine) or 0))
            latest = results[-1]
            if isinstance(tracker, NvmlTracker):
                # The tracker saw the warmup requests too: their tokens count for energy per token.
                requests = workload.requests * workload.repetitions + min(workload.warmup, workload.requests)
                generated = workload.n_predict * requests
                latest.metrics.update(tracker.metrics(generated))
            return {name: latest.metrics.get(name) for name in gate_names}, latest.samples, latest.warnings

        try:
            gated, samples, run_warnings = run()
            if not check:
                return results[-1]
            engine_fingerprint = fingerprint(results[0].engine)
            self._check(gated, samples, engine_fingerprint, workload.to_dict(), tolerances, run_warnings, remeasure=run)
        except LlmperfError as error:
            raise _failure(error) from None
        return results[-1]

    def fidelity(
        self,
        engine: Engine,
        prompts: Sequence[str | Sequence[str]] | None = None,
        *,
        top_k: int = 16,
        reference: Mapping[str, Any] | None = None,
        gate: Sequence[str] | None = None,
        tolerances: Mapping[str, object] | None = None,
        check: bool = True,
    ) -> FidelityResult:
        """Compare the engine's next-token distributions over ``prompts`` with the reference in this test's
        baseline: ``kl_mean``, ``kl_max``, ``top1_agree``, ``ref_logprob_mean`` (see ``fidelity.py``).

        ``--update-baselines`` stores the current distributions' top-``top_k`` as the new reference. With
        ``reference`` (``fidelity.reference_of(f16_engine, prompts)``, e.g. when ``engine`` is a quantisation of
        that model) the metrics are KL etc. from that reference, taken fresh on every run, and gated against the
        stored values like any other. With ``check=False`` nothing is checked: gather the metrics into one
        ``llmperf.check`` with others, passing ``reference=result.reference`` (stored-reference mode only).
        """
        __tracebackhide__ = True
        from pytest_llmperf.baseline import baseline_path, hardware_class, load_baseline
        from pytest_llmperf.check import accept_command
        from pytest_llmperf.fidelity import (
            DEFAULT_PROMPTS,
            FIDELITY_METRICS,
            check_reference,
            compare_to_reference,
            distributions_of,
            make_reference,
            normalise_prompts,
        )
        from pytest_llmperf.fingerprint import fingerprint

        try:
            texts = normalise_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
            if not isinstance(top_k, int) or top_k < 1:
                raise LlmperfError(f"fidelity top_k must be a positive integer, got {top_k!r}")
            unknown = sorted(set(gate or ()) - set(FIDELITY_METRICS))
            if unknown:
                raise LlmperfError(f"fidelity gate names {unknown}; fidelity metrics are {', '.join(FIDELITY_METRICS)}")
            distributions, key_kind = distributions_of(engine, texts, top_k)
            engine_fingerprint = fingerprint(engine.describe())
            path = baseline_path(self._session.baseline_dir, self._request.node.nodeid)
            stored = None if self._session.update or reference is not None else load_baseline(path)
            entry = stored.for_hardware(hardware_class({**engine_fingerprint})) if stored is not None else None
            stored_reference = reference is None
            if reference is not None:
                reference = check_reference(dict(reference), "fidelity(reference=...)")
                if reference["prompts"] != texts:
                    raise LlmperfError("fidelity(reference=...) was taken on other prompts than this check's")
                engine_fingerprint["fidelity_reference"] = reference.get("source")
            elif entry is not None and entry.reference is not None:
                reference = check_reference(entry.reference, str(path))
                if reference["prompts"] != texts:
                    raise LlmperfError(
                        f"{path}: the fidelity reference was recorded on other prompts; record it again with: "
                        f"{accept_command(self._request.node.nodeid)}"
                    )
            elif entry is not None:
                # Comparing the engine with itself would pass whatever it does: say what is missing instead.
                raise LlmperfError(
                    f"{path} has no fidelity reference (recorded before fidelity was checked here?); record it "
                    f"with: {accept_command(self._request.node.nodeid)}"
                )
            else:
                reference = make_reference(texts, distributions, top_k, key_kind)
            result = compare_to_reference(reference, distributions, key_kind)
            result.reference = reference
            if check:
                warnings = []
                if result.truncated:
                    warnings.append(
                        f"{result.truncated} of {result.positions} positions had a reference token outside the "
                        f"engine's top-{top_k}: KL is a lower bound there"
                    )
                gated = {name: result.metrics[name] for name in (gate or FIDELITY_METRICS)}
                self._check(
                    gated, None, engine_fingerprint, {"fidelity_prompts": len(texts), "top_k": top_k},
                    tolerances, warnings, reference=reference if stored_reference else None,
                )
        except LlmperfError as error:
            raise _failure(error) from None
        return result

    def scaling(
        self,
        engine: Engine,
        workload: Workload | None = None,
        concurrencies: Sequence[int] = (1, 2, 4, 8),
        *,
        gate: Sequence[str] = ("completion_tok_s", "efficiency"),
        tolerances: Mapping[str, object] | None = None,
    ) -> ScalingResult:
        """Run ``workload`` at each concurrency, tabulate throughput, speedup and efficiency, and check the
        gated metrics per concurrency (``completion_tok_s@c4``, ``efficiency@c8``) against the baseline.

        The table is printed at the end of the session and written to the JSON and Markdown reports.
        ``workload.requests`` should be at least the highest concurrency, or the top levels never fill up.
        """
        __tracebackhide__ = True
        from dataclasses import replace as replace_workload

        from pytest_llmperf.fingerprint import fingerprint
        from pytest_llmperf.runner import run_workload
        from pytest_llmperf.scaling import ScalingResult, check_concurrencies
        from pytest_llmperf.workload import Workload

        workload = workload or Workload()
        test = self._request.node.nodeid
        latest: list[ScalingResult] = []

        def run() -> Remeasured:
            results = {}
            for level in levels:
                with _measurement_lock():
                    results[level] = run_workload(
                        engine, replace_workload(workload, concurrency=level), self._engines.rss_base_bytes(engine) or 0
                    )
            latest.append(ScalingResult(test, results))
            warnings = sorted({warning for result in results.values() for warning in result.warnings})
            return latest[-1].metrics(gate), latest[-1].samples(gate), warnings

        try:
            levels = check_concurrencies(concurrencies)
            if workload.requests < levels[-1]:
                raise LlmperfError(
                    f"scaling up to concurrency {levels[-1]} needs Workload.requests >= {levels[-1]}, "
                    f"got {workload.requests}"
                )
            metrics, samples, run_warnings = run()
            engine_fingerprint = fingerprint(latest[0].results[levels[0]].engine)
            recorded = {**workload.to_dict(), "concurrency": levels}
            self._check(metrics, samples, engine_fingerprint, recorded, tolerances, run_warnings, remeasure=run)
        except LlmperfError as error:
            raise _failure(error) from None
        finally:
            if latest:
                self._session.scaling.append(latest[-1])
        return latest[-1]

    def check(
        self,
        metrics: Mapping[str, float | None],
        *,
        samples: Mapping[str, list[float]] | None = None,
        fingerprint: dict[str, Any] | None = None,
        workload: dict[str, Any] | None = None,
        tolerances: Mapping[str, object] | None = None,
        warnings: Sequence[str] = (),
        stderr: Mapping[str, float | None] | None = None,
        reference: Any = None,
        engine: Engine | None = None,
    ) -> CheckOutcome:
        """Check already-measured ``metrics`` against this test's baseline (once per test).

        The fingerprint holds this machine's library versions and hardware class, ``engine``'s description
        (backend, config, model file and sha256) when given, updated with ``fingerprint``.
        A regression fails the test; a missing or not-comparable baseline warns or skips (strict: fails).
        """
        __tracebackhide__ = True
        from pytest_llmperf.fingerprint import environment
        from pytest_llmperf.fingerprint import fingerprint as engine_fingerprint

        try:
            given = fingerprint or {}
            if engine is not None:
                described = engine_fingerprint(engine.describe())
            else:
                described = environment(given.get("backend"))
            merged = {**described, **given}
            return self._check(metrics, samples, merged, workload, tolerances, warnings, stderr, reference=reference)
        except LlmperfError as error:
            raise _failure(error) from None

    def _check(
        self,
        metrics: Mapping[str, float | None],
        samples: Mapping[str, list[float]] | None,
        fingerprint: dict[str, Any] | None,
        workload: dict[str, Any] | None,
        tolerances: Mapping[str, object] | None,
        warnings: Sequence[str],
        stderr: Mapping[str, float | None] | None = None,
        remeasure: Callable[[], Remeasured] | None = None,
        reference: Any = None,
    ) -> CheckOutcome:
        """Check one set of metrics; ``remeasure`` (measure() only) confirms a regression before it fails."""
        __tracebackhide__ = True
        from pytest_llmperf.check import Measurement, Status, check_measurement

        if self._checked:
            raise LlmperfError(
                f"{self._request.node.nodeid}: llmperf checks one set of metrics per test (one baseline file); "
                "gather the metrics into one check() or split the test"
            )
        self._checked = True
        node = self._request.node
        fingerprint = dict(fingerprint or {})
        node.config.hook.pytest_llmperf_fingerprint(config=node.config, nodeid=node.nodeid, fingerprint=fingerprint)
        table = self._session.tolerances
        marker_table = _marker_tolerances(node)
        if marker_table:
            table = table.with_layer(f"marker perf_tolerance on {node.nodeid}", marker_table)
        if tolerances:
            table = table.with_layer("measure(tolerances=...)", tolerances)
        measurement = Measurement(
            test=node.nodeid,
            metrics=dict(metrics),
            samples=dict(samples or {}),
            fingerprint=fingerprint,
            workload=workload or {},
            warnings=list(warnings),
            stderr=dict(stderr or {}),
            reference=reference,
        )
        outcome = check_measurement(measurement, self._session.baseline_dir, table, update=self._session.update)
        for _ in range(self._session.confirm):
            if outcome.status is not Status.REGRESSED or remeasure is None:
                break
            # A regression is confirmed by measuring again: a machine that was busy for a few seconds slows one
            # measurement, rarely two in a row, while a real slowdown slows both.
            first = ", ".join(f"{c.metric} {c.delta_pct:+.1f}%" for c in outcome.regressions if c.delta_pct is not None)
            metrics, new_samples, _ = remeasure()
            measurement = replace(measurement, metrics=dict(metrics), samples=dict(new_samples))
            outcome = check_measurement(measurement, self._session.baseline_dir, table, update=False)
            verdict = "confirmed it" if outcome.status is Status.REGRESSED else "was within tolerance: noise"
            outcome.notes.append(f"first measurement regressed ({first}); a second measurement {verdict}")
        self._session.outcomes.append(outcome)
        if outcome.pending is not None:
            node.stash.setdefault(_pending_key, []).append(outcome)
        for name, value in metrics.items():
            node.user_properties.append((f"llmperf.{name}", value))
        node.user_properties.append(("llmperf.status", outcome.status.value))
        self._share_with_pytest_benchmark(metrics)

        if outcome.status is Status.REGRESSED:
            pytest.fail(outcome.message, pytrace=False)
        if outcome.status in (Status.NEW, Status.NOT_COMPARABLE) and self._session.strict:
            pytest.fail(f"[strict] {outcome.message}", pytrace=False)
        if outcome.status is Status.NOT_COMPARABLE:
            pytest.skip(outcome.message)
        if outcome.status is Status.PASSED and outcome.unjudged:
            # A gated metric without a verdict is never a silent pass: strict fails, otherwise it warns.
            if self._session.strict:
                pytest.fail(f"[strict] {outcome.describe_unjudged()}", pytrace=False)
            _warn_at(node, outcome.describe_unjudged())
        if outcome.status is Status.NEW or outcome.improvements:
            _warn_at(node, outcome.message)
        return outcome

    def _share_with_pytest_benchmark(self, metrics: Mapping[str, float | None]) -> None:
        """A test that also uses pytest-benchmark's ``benchmark`` fixture gets the metrics in its extra_info,
        so ``--benchmark-json`` and ``pytest-benchmark compare`` see them."""
        if "benchmark" in self._request.fixturenames:
            benchmark = self._request.getfixturevalue("benchmark")
            benchmark.extra_info.update({f"llmperf.{name}": value for name, value in metrics.items()})


def _measurement_lock() -> contextlib.AbstractContextManager[object]:
    """Under pytest-xdist, one measurement at a time on this machine.

    Workers measuring at once share the cores (and memory bandwidth): each would see the other's load as a
    slowdown. Other work (building engines, unmeasured tests) still runs in parallel.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return contextlib.nullcontext()
    from pytest_llmperf.locks import machine_lock

    # Workers pinned to different GPUs measure at the same time; the rest take turns.
    return machine_lock(f"measure:{os.environ.get(_WORKER_GPUS, 'machine')}")


_WORKER_GPUS = "LLMPERF_WORKER_GPUS"


def _gpus_per_worker(config: pytest.Config) -> str:
    setting = str(config.getini("llmperf_gpus_per_worker")).strip().lower()
    if setting not in ("auto", "off") and not (setting.isdigit() and int(setting) > 0):
        raise LlmperfError(
            f"ini llmperf_gpus_per_worker: expected 'auto', 'off' or a whole number > 0, got {setting!r}"
        )
    return setting


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a pytest-xdist worker that collected perf or gpu tests, pin the worker to its own GPUs.

    After collection, so a run without such tests never touches NVML; before the first test, so before CUDA
    starts in this process (a test module that initialises CUDA at import time defeats it).
    """
    if any(item.get_closest_marker("gpu") or item.get_closest_marker("perf") for item in session.items):
        _pin_worker_gpus(session.config)


def _pin_worker_gpus(config: pytest.Config) -> None:
    """On a pytest-xdist worker, give the worker its own GPUs through CUDA_VISIBLE_DEVICES."""
    setting = _gpus_per_worker(config)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or setting == "off":
        return
    from pytest_llmperf.gpu import probe_gpus, worker_devices

    devices, _, _ = probe_gpus()
    if not devices:
        return
    index = int(str(workerinput["workerid"]).lstrip("gw"))
    mine = worker_devices(devices, index, int(workerinput["workercount"]), None if setting == "auto" else int(setting))
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(device.uuid for device in mine)
    os.environ[_WORKER_GPUS] = os.environ["CUDA_VISIBLE_DEVICES"] or "none"


def _warn_at(node: pytest.Item, message: str) -> None:
    """Warn with the test's own location (not this plugin's) as the place to look."""
    filename, lineno, _ = node.location
    warnings.warn_explicit(
        PytestLlmperfWarning(message), PytestLlmperfWarning, str(node.config.rootpath / filename), (lineno or 0) + 1
    )


def _gpu_requirement(item: pytest.Item) -> tuple[int, float | None] | None:
    marker = item.get_closest_marker("gpu")
    if marker is None:
        return None
    unknown = set(marker.kwargs) - {"count", "min_vram_gib"}
    count = marker.kwargs.get("count", marker.args[0] if marker.args else 1)
    min_vram = marker.kwargs.get("min_vram_gib")
    if unknown or len(marker.args) > 1 or not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise LlmperfError(
            f"{item.nodeid}: gpu marker takes count=<int >= 1> and min_vram_gib=<number>, "
            f"got args {marker.args!r} kwargs {marker.kwargs!r}"
        )
    if min_vram is not None and (not isinstance(min_vram, (int, float)) or isinstance(min_vram, bool) or min_vram <= 0):
        raise LlmperfError(f"{item.nodeid}: gpu marker min_vram_gib must be a positive number, got {min_vram!r}")
    return count, min_vram


def _missing_gpus(count: int, min_vram_gib: float | None) -> str | None:
    """Why the visible GPUs do not meet the requirement, or None when they do."""
    from pytest_llmperf.gpu import probe_gpus

    devices, _, reason = probe_gpus()
    if reason:
        return f"needs {count} GPU(s): {reason}"
    if min_vram_gib is not None:
        devices = [d for d in devices if d.memory_total_bytes / 1024**3 >= min_vram_gib]
    if len(devices) < count:
        memory = f" with >= {min_vram_gib} GiB each" if min_vram_gib is not None else ""
        return f"needs {count} GPU(s){memory}, {len(devices)} visible (CUDA_VISIBLE_DEVICES honoured)"
    return None


def _check_gpu_marker(item: pytest.Item) -> None:
    """Skip a gpu(...) test whose GPUs are missing; fail it with --llmperf-require-gpu or in strict mode."""
    try:
        requirement = _gpu_requirement(item)
    except LlmperfError as error:
        raise _failure(error) from None
    if requirement is None:
        return
    missing = _missing_gpus(*requirement)
    if missing is None:
        return
    session = item.config.stash.get(session_key, None)
    if session is not None and (session.require_gpu or session.strict):
        flag = "--llmperf-require-gpu" if session.require_gpu else "strict"
        pytest.fail(f"[{flag}] {item.nodeid} {missing}", pytrace=False)
    pytest.skip(missing)


@pytest.fixture
def nvml_tracker() -> Callable[..., NvmlTracker]:
    """``with nvml_tracker(interval_s=0.05, pids=None) as gpu: ...`` then ``gpu.metrics(generated_tokens)``.

    Samples GPU memory (device-level and per-process), utilisation, power and energy on a thread; without NVML
    or a visible GPU, ``gpu.available`` is False, ``gpu.reason`` says why and every metric is None.
    """
    from pytest_llmperf.gpu import NvmlTracker

    return NvmlTracker


@pytest.fixture
def llmperf(request: pytest.FixtureRequest, _llmperf_engines: EngineCache) -> PerfCheck:
    """Measure a workload on an engine and check it against this test's baseline; see ``PerfCheck``."""
    return PerfCheck(request, request.config.stash[session_key], _llmperf_engines)


class LmEvalScorer:
    """The ``lm_eval_scorer`` fixture: lm-eval tasks on an engine, scored and checked against the baseline."""

    def __init__(self, check: PerfCheck) -> None:
        self._check = check

    def __call__(
        self,
        engine: Engine,
        tasks: Sequence[str],
        *,
        limit: int | float | None = None,
        num_fewshot: int | None = None,
        batch_size: int | str | None = None,
        seed: int = 1234,
        tolerances: Mapping[str, object] | None = None,
        check: bool = True,
        **evaluate_kwargs: Any,
    ) -> AccuracyResult:
        """Score ``tasks`` (shipped task names, lm-eval task names or YAML paths) on ``engine``.

        Every ``<task>.<metric>`` is checked against this test's baseline like any metric (``check=False``
        only scores). Returns the scores and their standard errors.
        """
        __tracebackhide__ = True
        from pytest_llmperf.accuracy import evaluate
        from pytest_llmperf.fingerprint import fingerprint

        try:
            make_model = getattr(engine, "lm_eval_model", None)
            if make_model is None:
                raise LlmperfError(f"the {engine.backend!r} engine cannot be scored by lm-eval (no lm-eval model)")
            scores = evaluate(
                make_model(),
                tasks,
                limit=limit,
                num_fewshot=num_fewshot,
                batch_size=batch_size,
                seed=seed,
                **evaluate_kwargs,
            )
            if check:
                self._check._check(
                    scores.metrics,
                    None,
                    {**fingerprint(engine.describe(), ("lm-eval",)), **scores.fingerprint},
                    {"tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot, "documents": scores.documents},
                    tolerances,
                    (),
                    scores.stderr,
                )
        except LlmperfError as error:
            raise _failure(error) from None
        return scores


@pytest.fixture
def lm_eval_scorer(llmperf: PerfCheck) -> LmEvalScorer:
    """Score lm-eval tasks on an engine and check the accuracy against this test's baseline."""
    return LmEvalScorer(llmperf)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Before -m/-k deselect anything: baseline files of fully collected modules that no collected test owns.

    Only a module collected whole (named on the command line, or inside a directory that was) can tell which
    files are stale: a run of ``module.py::test_a`` says nothing about the module's other tests.
    """
    from pytest_llmperf.baseline import baseline_path, stale_baselines

    llmperf_session = config.stash.get(session_key, None)
    if llmperf_session is None:
        return
    whole = _wholly_selected(config)
    try:
        expected = {
            baseline_path(llmperf_session.baseline_dir, item.nodeid)
            for item in items
            if "::" in item.nodeid and _inside_any(Path(item.path), whole)
        }
    except LlmperfError:
        return  # the test itself reports a node id that cannot have a baseline
    llmperf_session.stale.update(stale_baselines(expected))


def _wholly_selected(config: pytest.Config) -> list[Path]:
    """The paths given to pytest without a ``::`` selection (or the default test paths)."""
    if config.getoption("lf", False):
        return []  # --last-failed collects only the failed tests of a module: judge nothing
    return [Path(config.invocation_params.dir, arg).resolve() for arg in config.args if "::" not in arg]


def _inside_any(path: Path, roots: list[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == root or root in resolved.parents for root in roots)


_MARKERS = ("perf", "perf_tolerance", "gpu")


def _check_misspelled_markers(item: pytest.Item) -> None:
    """A marker that is not registered and is close to one of this plugin's fails the test: a misspelled
    ``perf_tolerance`` would otherwise run the test with the default tolerances."""
    import difflib

    registered = {line.split(":", 1)[0].split("(", 1)[0].strip() for line in item.config.getini("markers")}
    for marker in item.iter_markers():
        if marker.name in registered or marker.name in _MARKERS:
            continue
        close = difflib.get_close_matches(marker.name, _MARKERS, n=1, cutoff=0.8)
        if close:
            pytest.fail(
                f"{item.nodeid}: unknown marker {marker.name!r}; did you mean {close[0]!r}? "
                "(pytest-llmperf's markers are perf, perf_tolerance and gpu)",
                pytrace=False,
            )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Bad marker arguments fail the test before anything is measured, naming the marker and the value;
    a gpu(...) test without its GPUs is skipped (or failed, see ``_check_gpu_marker``)."""
    _check_misspelled_markers(item)
    for marker in item.iter_markers("perf"):
        if marker.args or marker.kwargs:
            pytest.fail(
                f"{item.nodeid}: the perf marker takes no arguments, got {marker.args or ''}{marker.kwargs or ''}; "
                "put tolerances in perf_tolerance(...)",
                pytrace=False,
            )
    session = item.config.stash.get(session_key, None)
    if session is not None:
        try:
            marker_table = _marker_tolerances(item)
            if marker_table:
                session.tolerances.with_layer(f"marker perf_tolerance on {item.nodeid}", marker_table)
        except LlmperfError as error:
            raise _failure(error) from None
    _check_gpu_marker(item)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from pytest_llmperf.report import outcome_to_json, write_reports

    config = session.config
    llmperf_session = config.stash.get(session_key, None)
    if llmperf_session is None:
        return
    if _is_xdist_worker(config):
        # The controller merges these in pytest_testnodedown.
        config.workeroutput["llmperf_outcomes"] = [  # type: ignore[attr-defined]
            outcome_to_json(outcome) for outcome in llmperf_session.outcomes
        ]
        config.workeroutput["llmperf_stale"] = [str(path) for path in llmperf_session.stale]  # type: ignore[attr-defined]
        config.workeroutput["llmperf_scaling"] = [  # type: ignore[attr-defined]
            result.to_json() for result in llmperf_session.scaling
        ]
    else:
        if llmperf_session.outcomes or llmperf_session.report is not None:
            try:
                write_reports(llmperf_session.outcomes, llmperf_session.report, llmperf_session.scaling)
            except OSError as error:
                llmperf_session.errors.append(f"cannot write the llmperf report: {error}")
                session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        if llmperf_session.prune_stale:
            for path in llmperf_session.stale:
                path.unlink(missing_ok=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: fold a finished worker's outcomes into the controller's session."""
    from pytest_llmperf.report import outcome_from_json
    from pytest_llmperf.scaling import ScalingResult

    llmperf_session = node.config.stash.get(session_key, None)
    output = getattr(node, "workeroutput", {})
    if llmperf_session is not None:
        llmperf_session.outcomes.extend(outcome_from_json(entry) for entry in output.get("llmperf_outcomes", []))
        llmperf_session.stale.update(Path(path) for path in output.get("llmperf_stale", []))
        llmperf_session.scaling.extend(ScalingResult.from_json(entry) for entry in output.get("llmperf_scaling", []))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    from pytest_llmperf.report import align, render_notes, render_table, tradeoff_rows
    from pytest_llmperf.scaling import render_scaling

    session = config.stash.get(session_key, None)
    if session is None or not (session.outcomes or session.stale or session.scaling or session.errors):
        return
    terminalreporter.write_sep("=", "llmperf")
    for problem in session.errors:
        terminalreporter.write_line(f"ERROR {problem}", red=True)
    for line in render_table(sorted(session.outcomes, key=lambda outcome: outcome.test)):
        terminalreporter.write_line(line)
    notes = render_notes(session.outcomes)
    if notes:
        terminalreporter.write_line("")
        for note in notes:
            terminalreporter.write_line(note)
    tradeoff = tradeoff_rows(session.outcomes)
    if tradeoff:
        terminalreporter.write_line("")
        terminalreporter.write_line("trade-off (current values; accuracy and fidelity beside speed and memory):")
        for line in align(tradeoff, numeric=set(range(1, len(tradeoff[0])))):
            terminalreporter.write_line("  " + line)
    if session.scaling:
        terminalreporter.write_line("")
        terminalreporter.write_line("scaling (speedup: tok/s over the lowest concurrency's; efficiency: speedup / N):")
        for result in sorted(session.scaling, key=lambda r: r.test):
            for line in render_scaling(result):
                terminalreporter.write_line(line)
    if session.stale:
        terminalreporter.write_line("")
        terminalreporter.write_line(f"stale baseline files (no collected test owns them): {len(session.stale)}")
        for path in sorted(session.stale):
            terminalreporter.write_line(f"  {path}")
        if session.prune_stale:
            terminalreporter.write_line("deleted (--llmperf-prune-stale)")
        else:
            terminalreporter.write_line("delete them with --llmperf-prune-stale once their tests are really gone")
