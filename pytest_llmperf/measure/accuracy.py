"""Accuracy by lm-eval's own evaluator (``simple_evaluate``) on the engine under test.

Tasks are the offline ones shipped in ``pytest_llmperf/tasks`` (``llmperf_arc``, ``llmperf_hellaswag``,
``llmperf_gsm``, and for the trained addition model ``llmperf_addition``, ``llmperf_addition_mc``), a path to
an lm-eval task YAML, or any task name lm-eval knows. lm-eval runs offline and
quiet: ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` are set unless the user set them, no progress bars, no
``git describe`` into whatever repository the tests run in. lm-eval is imported only here, only when scored.

Metric names are ``<task>.<metric>`` (``llmperf_arc.acc``); a metric computed after an lm-eval filter other
than ``none`` keeps lm-eval's suffix (``llmperf_gsm.exact_match,flexible-extract``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmperf.errors import LlmperfError

TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tasks"
SHIPPED_TASKS = ("llmperf_arc", "llmperf_hellaswag", "llmperf_gsm", "llmperf_addition", "llmperf_addition_mc")


@dataclass
class AccuracyResult:
    """Scores per ``<task>.<metric>``, with lm-eval's standard error (None where lm-eval gives none)."""

    metrics: dict[str, float]
    stderr: dict[str, float | None]
    documents: dict[str, int]
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> float:
        try:
            return self.metrics[name]
        except KeyError:
            raise KeyError(f"no accuracy metric {name!r}; scored: {', '.join(sorted(self.metrics))}") from None


def _task_file_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _shipped_task(name: str) -> dict[str, Any]:
    """The shipped task ``name`` as an lm-eval config dict whose data file path is absolute."""
    import yaml

    config: dict[str, Any] = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    files = config["dataset_kwargs"]["data_files"]
    config["dataset_kwargs"]["data_files"] = {split: str(TASKS_DIR / path) for split, path in files.items()}
    return config


def _user_yaml(path_text: str) -> str:
    """A user's task YAML: it must exist and parse (with lm-eval's loader, which knows its ``!function``)."""
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml  # what lm-eval's TaskManager reads task files with

    path = Path(path_text)
    if not path.is_file():
        raise LlmperfError(f"lm-eval task file {path_text!r} does not exist")
    try:
        config = load_yaml(path, resolve_func=False)
    except ValueError as error:  # lm-eval's "Expected YAML dict", include cycles
        raise LlmperfError(f"lm-eval task file {path_text!r} is not a task config ({error})") from None
    except (yaml.YAMLError, OSError) as error:
        raise LlmperfError(f"lm-eval task file {path_text!r} does not parse: {error}") from None
    if not isinstance(config, dict) or not ("task" in config or "group" in config):
        raise LlmperfError(f"lm-eval task file {path_text!r} is not a task config (it has no 'task' key)")
    return str(path.resolve())


def resolve_tasks(tasks: Sequence[str]) -> tuple[list[str | dict[str, Any]], list[str], dict[str, Any]]:
    """lm-eval task specs for ``tasks``, the names that need lm-eval's own task index, and a fingerprint."""
    if isinstance(tasks, str) or not tasks:
        raise LlmperfError(f"lm_eval_scorer: tasks must be a non-empty list of task names or YAML paths, got {tasks!r}")
    specs: list[str | dict[str, Any]] = []
    indexed: list[str] = []
    fingerprint: dict[str, Any] = {}
    for task in tasks:
        if task in SHIPPED_TASKS:
            shipped = _shipped_task(task)
            specs.append(shipped)
            data = [Path(path) for path in shipped["dataset_kwargs"]["data_files"].values()]
            files = [TASKS_DIR / f"{task}.yaml", *data]
            fingerprint[task] = {"source": "pytest-llmperf", "sha256": _task_file_digest(files)}
        elif task.endswith((".yaml", ".yml")):
            specs.append(_user_yaml(task))
            fingerprint[Path(task).stem] = {"source": Path(task).name, "sha256": _task_file_digest([Path(task)])}
        else:
            specs.append(task)
            indexed.append(task)
            fingerprint[task] = {"source": "lm-eval"}
    return specs, indexed, fingerprint


def _progress_bars_off() -> Callable[[], None]:
    """Turn lm-eval's tqdm bars off (building requests, tokenizing, bootstrapping); returns the undo.

    tqdm reads ``TQDM_DISABLE`` only when it is imported, so the bar class itself is swapped, in
    ``tqdm`` and in every imported ``lm_eval`` module that holds it, for one that is always disabled.
    """
    import tqdm as tqdm_package

    original = tqdm_package.tqdm

    class Disabled(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    holders = [tqdm_package] + [
        module for name, module in list(sys.modules.items())
        if name.startswith("lm_eval") and getattr(module, "tqdm", None) is original
    ]
    for holder in holders:
        setattr(holder, "tqdm", Disabled)  # noqa: B010

    def restore() -> None:
        for holder in holders:
            setattr(holder, "tqdm", original)  # noqa: B010

    return restore


@contextlib.contextmanager
def quiet_offline_lm_eval() -> Iterator[None]:
    """lm-eval offline and quiet while scoring: no hub, no telemetry, no git, warnings only; restored after.

    ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` are set unless the user set them (a user who wants the hub sets
    them to 0), and ``datasets``' own switches follow them, since it reads the environment only when imported.
    """
    offline = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
    saved_environ = {name: os.environ.get(name) for name in offline}
    for name, value in offline.items():
        os.environ.setdefault(name, value)
    import datasets
    import lm_eval.evaluator as evaluator

    hub_offline = os.environ["HF_HUB_OFFLINE"].strip().lower() in ("1", "true", "yes", "on")
    logger = logging.getLogger("lm_eval")
    saved = (evaluator.get_git_commit_hash, evaluator.add_env_info, logger.level, datasets.is_progress_bar_enabled())
    saved_config = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS)
    # simple_evaluate runs `git describe` in the current directory and collects torch's environment report:
    # noise (and seconds) that says nothing about the engine under test.
    evaluator.get_git_commit_hash = lambda: None
    evaluator.add_env_info = lambda results: None
    logger.setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    datasets.config.HF_HUB_OFFLINE = hub_offline
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False  # a HEAD request per local JSON file otherwise
    restore_progress = _progress_bars_off()
    try:
        yield
    finally:
        restore_progress()
        evaluator.get_git_commit_hash, evaluator.add_env_info = saved[0], saved[1]
        logger.setLevel(saved[2])
        if saved[3]:
            datasets.enable_progress_bars()
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved_config
        for name, previous in saved_environ.items():
            if previous is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = previous


def _task_manager(indexed: Sequence[str]) -> Any:
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's thousands of built-in tasks takes ~15 s: only when a task needs it.
    manager = TaskManager(include_defaults=bool(indexed))
    if indexed:
        known = set(manager.all_tasks)
        unknown = [task for task in indexed if task not in known]
        if unknown:
            import difflib

            hints = [
                f"{task!r}"
                + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(task, known, 1)) else "")
                for task in unknown
            ]
            raise LlmperfError(
                f"lm-eval knows no task {', '.join(hints)}; use a task name from `lm-eval ls tasks`, a path to a "
                f"task YAML, or a shipped task ({', '.join(SHIPPED_TASKS)})"
            )
    return manager


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def metrics_from_results(results: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float | None]]:
    """``<task>.<metric>`` values and standard errors from ``simple_evaluate``'s ``results["results"]``."""
    metrics: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    for task, values in sorted(results.items()):
        for key, value in values.items():
            metric, sep, filter_name = key.partition(",")
            if not sep or metric.endswith("_stderr") or _number(value) is None:
                continue  # "alias", "name", "sample_len" and friends
            name = f"{task}.{metric}" if filter_name == "none" else f"{task}.{metric},{filter_name}"
            metrics[name] = float(value)
            stderr[name] = _number(values.get(f"{metric}_stderr,{filter_name}"))
    return metrics, stderr


def evaluate(
    lm: Any,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str | None = None,
    seed: int = 1234,
    **evaluate_kwargs: Any,
) -> AccuracyResult:
    """Score ``tasks`` with ``lm`` (an lm-eval ``LM``) through ``lm_eval.simple_evaluate``."""
    try:
        import lm_eval
    except ImportError:
        raise LlmperfError("lm_eval_scorer needs lm-eval: `pip install 'pytest-llmperf[eval]'`") from None
    specs, indexed, task_fingerprint = resolve_tasks(tasks)
    with quiet_offline_lm_eval():
        import lm_eval

        manager = _task_manager(indexed)
        try:
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=specs,
                task_manager=manager,
                limit=limit,
                num_fewshot=num_fewshot,
                batch_size=batch_size,
                log_samples=False,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=None,  # None: lm-eval does not import torch to seed it
                fewshot_random_seed=seed,
                **evaluate_kwargs,
            )
        except LlmperfError:
            raise
        except Exception as error:
            raise LlmperfError(f"lm-eval failed on tasks {list(tasks)}: {type(error).__name__}: {error}") from error
    if output is None:
        raise LlmperfError("lm-eval returned no results (a non-zero rank in a distributed run)")
    metrics, stderr = metrics_from_results(output["results"])
    documents = {task: int(counts["effective"]) for task, counts in output.get("n-samples", {}).items()}
    settings = {"limit": limit, "num_fewshot": num_fewshot, "seed": seed, "tasks": task_fingerprint}
    settings["task_versions"] = dict(output.get("versions", {}))
    return AccuracyResult(metrics, stderr, documents, {"accuracy": settings})
