"""A run's settings (options, ini keys, environment) and what the run found, for the end-of-session reports.

Pytest-free: the plugin hands ``build_session`` two look-ups, one for command-line options and one for ini keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_llmperf.errors import LlmperfError

if TYPE_CHECKING:
    from pytest_llmperf.core.outcome import CheckOutcome
    from pytest_llmperf.core.tolerance import ToleranceTable

#: Metrics checked against the baseline unless the ini key ``llmperf_gate`` or ``measure(gate=...)`` say
#: otherwise. Every other metric is still measured, reported and available on the result. Of the two memory
#: metrics each engine gates the one it can own (``measure/calls.default_gate``): ``engine_mem_gib`` where the
#: engine reports its buffers (llama.cpp), ``rss_peak_gib`` where the engine has processes of its own (a launched
#: server); an in-process engine's RSS depends on what ran before it in the process (docs/metrics.md).
DEFAULT_GATE = ("completion_tok_s", "total_tok_s", "e2e_p99", "ttft_p99", "tpot_p50", "engine_mem_gib",
                "rss_peak_gib")

#: The command-line options: (option, help of its ini key or None when it has none, argparse settings).
OPTIONS: list[tuple[str, str | None, dict[str, Any]]] = [
    ("--update-baselines", None, {"action": "store_true", "help": "re-measure the selected perf tests and rewrite "
                                  "their baseline files (only tests that pass)"}),
    ("--llmperf-baseline-dir", "baseline directory, relative to the rootdir", {"metavar": "DIR"}),
    ("--llmperf-strict", "strict mode: true/false (default: on when $CI is set)", {"action": "store_true",
     "default": None, "help": "fail instead of skip/warn on a missing, not-comparable or unjudged baseline"}),
    ("--llmperf-tolerance", None, {"action": "append", "default": [], "metavar": "METRIC=TOL",
                                   "help": "tolerance for a metric or glob pattern, e.g. 'completion_tok_s=10%%'"}),
    ("--llmperf-prune-stale", None, {"action": "store_true", "help": "delete the stale baseline files listed"}),
    ("--llmperf-report", "JSON report path (Markdown beside it)", {"metavar": "PATH",
                                                                   "help": "JSON report (a .md path: Markdown)"}),
    ("--llmperf-confirm", "re-measurements that must confirm a regression (default 1)", {"type": int, "metavar": "N"}),
    ("--llmperf-busy-wait", "seconds to wait for a busy machine to quieten before measuring again (default 30)",
     {"type": float, "metavar": "S"}),
    ("--llmperf-require-gpu", None, {"action": "store_true", "help": "a gpu(...) test without its GPUs fails"}),
    ("--llmperf-backend", "default engine backend", {"metavar": "NAME"}),
    ("--llmperf-model", "model for engines that name none: lines of MODEL (any backend) or BACKEND = MODEL",
     {"metavar": "[BACKEND=]MODEL", "action": "append", "default": [],
      "help": "model for engines that name none: MODEL (any backend) or BACKEND=MODEL (that backend); repeatable"}),
]
INI_DEFAULTS = {"llmperf_baseline_dir": "baselines", "llmperf_strict": "", "llmperf_report": "",
                 "llmperf_confirm": "1", "llmperf_busy_wait": "30", "llmperf_backend": "llama_cpp", "llmperf_model": ""}

_BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


@dataclass
class LlmperfSession:
    """Per-run settings and the outcomes collected for the summary (kept in ``config.stash``)."""

    baseline_dir: Path
    update: bool
    strict: bool
    tolerances: ToleranceTable
    gate: tuple[str, ...]
    backend: str
    #: Models for engines that name none: by backend, ``""`` for any backend (``parse_models``).
    models: dict[str, str]
    root: Path = Path()
    report: Path | None = None
    prune_stale: bool = False
    confirm: int = 1
    require_gpu: bool = False
    #: How long a suspect measurement on a busy machine waits for it to quieten before measuring again.
    busy_wait_s: float = 30.0
    #: Under pytest-xdist, GPUs pinned to each worker: "auto", "off" or a number.
    gpus_per_worker: str = "auto"
    outcomes: list[CheckOutcome] = field(default_factory=list)
    stale: set[Path] = field(default_factory=set)
    #: ``measure.scaling.ScalingResult`` of every scaling call, for the end-of-session tables.
    scaling: list[Any] = field(default_factory=list)
    #: Points collected per study (before -k/-m deselect them: a partly selected study chooses nothing).
    study_sizes: dict[str, int] = field(default_factory=dict)
    #: ``core.studies.StudyResult`` of every study, judged at the end of the session (controller only).
    studies: list[Any] = field(default_factory=list)
    #: Problems of the session itself (a report that could not be written), printed in the summary.
    errors: list[str] = field(default_factory=list)


def _strict(option: bool | None, ini: str, environ: Mapping[str, str]) -> bool:
    if option is not None:
        return bool(option)
    if ini.strip():
        value = _BOOLEANS.get(ini.strip().lower())
        if value is None:
            raise LlmperfError(f"ini llmperf_strict: expected true or false, got {ini!r}")
        return value
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def _confirm(option: int | None, ini: str) -> int:
    if option is None:
        if not ini.strip().isdigit():
            raise LlmperfError(f"ini llmperf_confirm: expected a whole number >= 0, got {ini.strip()!r}")
        return int(ini)
    if option < 0:
        raise LlmperfError(f"--llmperf-confirm: expected a whole number >= 0, got {option}")
    return option


def parse_models(entries: Iterable[str], where: str) -> dict[str, str]:
    """``["vllm = /models/llama", "q4_k_m"]`` -> ``{"vllm": "/models/llama", "": "q4_k_m"}``: an entry whose part
    before ``=`` is a name (letters, digits, ``_``) is that backend's model; any other entry the model of every
    backend without one of its own. The engine cache rejects a backend it does not know."""
    models: dict[str, str] = {}
    for entry in (line.strip() for line in entries):
        if not entry:
            continue
        name, sep, model = entry.partition("=")
        backend = name.strip() if sep and name.strip().isidentifier() else ""
        model = model.strip() if backend else entry
        if not model:
            raise LlmperfError(f"{where}: {entry!r} names no model (expected MODEL or BACKEND=MODEL)")
        if backend in models:
            whose = f"backend {backend!r}" if backend else "every backend"
            raise LlmperfError(f"{where}: two models for {whose}: {models[backend]!r} and {model!r}")
        models[backend] = model
    return models


def build_session(
    option: Callable[[str], Any], ini: Callable[[str], Any], rootpath: Path, invocation_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> LlmperfSession:
    """The session from ``option(dest)`` and ``ini(key)``; every bad value raises naming its option or key."""
    from pytest_llmperf.core.metrics import metric_spec
    from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable, parse_assignments

    environ = os.environ if environ is None else environ
    gate = tuple(ini("llmperf_gate"))
    for name in gate:
        metric_spec(name)
    tolerances = ToleranceTable([
        ("--llmperf-tolerance", parse_assignments(option("llmperf_tolerance"), "--llmperf-tolerance")),
        ("ini llmperf_tolerances", parse_assignments(ini("llmperf_tolerances"), "ini llmperf_tolerances")),
        ("built-in default", DEFAULT_TOLERANCES),
    ])
    report = option("llmperf_report") or ini("llmperf_report")
    return LlmperfSession(
        baseline_dir=Path(rootpath, option("llmperf_baseline_dir") or ini("llmperf_baseline_dir")),
        update=bool(option("update_baselines")),
        strict=_strict(option("llmperf_strict"), str(ini("llmperf_strict")), environ),
        tolerances=tolerances,
        gate=gate,
        backend=option("llmperf_backend") or ini("llmperf_backend"),
        models=parse_models(option("llmperf_model") or str(ini("llmperf_model")).splitlines(),
                            "--llmperf-model" if option("llmperf_model") else "ini llmperf_model"),
        root=rootpath,
        report=Path(invocation_dir, report) if report else None,
        prune_stale=bool(option("llmperf_prune_stale")),
        confirm=_confirm(option("llmperf_confirm"), str(ini("llmperf_confirm"))),
        require_gpu=bool(option("llmperf_require_gpu")),
        busy_wait_s=_busy_wait(option("llmperf_busy_wait"), str(ini("llmperf_busy_wait"))),
        gpus_per_worker=_gpus_per_worker(str(ini("llmperf_gpus_per_worker"))),
    )


def _busy_wait(option: float | None, ini: str) -> float:
    where, text = ("--llmperf-busy-wait", str(option)) if option is not None else ("ini llmperf_busy_wait", ini)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise LlmperfError(f"{where}: expected seconds >= 0, got {text.strip()!r}")
    return value


def _gpus_per_worker(setting: str) -> str:
    setting = setting.strip().lower()
    if setting not in ("auto", "off") and not (setting.isdigit() and int(setting) > 0):
        raise LlmperfError(f"ini llmperf_gpus_per_worker: expected 'auto', 'off' or a number > 0, got {setting!r}")
    return setting
