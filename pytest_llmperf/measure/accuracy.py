"""Accuracy by lm-eval's own evaluator (``simple_evaluate``) on the engine under test.

Tasks are the offline ones shipped in ``pytest_llmperf/assets/tasks`` (``llmperf_arc``, ``llmperf_hellaswag``,
``llmperf_gsm``, ``llmperf_winogrande``, ``llmperf_truthfulqa_mc2``, and for the trained addition model
``llmperf_addition``, ``llmperf_addition_mc``), a path to an lm-eval task YAML, or any task name lm-eval knows.
lm-eval runs offline and quiet: ``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE`` are set unless the user set them, no
progress bars, no ``git describe`` into whatever repository the tests run in. lm-eval is imported only here,
only when scored. A task of lm-eval's whose dataset is not in the local Hugging Face cache fails naming the
dataset, the cache and the switch that allows the download.

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

from pytest_llmperf.core.paired import Documents
from pytest_llmperf.errors import LlmperfError

TASKS_DIR = Path(__file__).resolve().parent.parent / "assets" / "tasks"
SHIPPED_TASKS = (
    "llmperf_arc",
    "llmperf_hellaswag",
    "llmperf_gsm",
    "llmperf_winogrande",
    "llmperf_truthfulqa_mc2",
    "llmperf_addition",
    "llmperf_addition_mc",
)


@dataclass
class AccuracyResult:
    """Scores per ``<task>.<metric>``, with lm-eval's standard error (None where lm-eval gives none)."""

    metrics: dict[str, float]
    stderr: dict[str, float | None]
    documents: dict[str, int]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    #: The score of every document, per metric that is a mean over documents (the paired verdict's input).
    per_document: dict[str, Documents] = field(default_factory=dict)

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


def _shipped_task_files(name: str) -> list[Path]:
    """The files shipped task ``name`` reads: its YAML, its data files and the modules of its ``!function``s.

    The YAML is passed to lm-eval by path: lm-eval resolves its ``!function``s beside it, and its
    ``custom_dataset`` (``task_functions.load_jsonl``) reads ``data_files`` relative to that folder too.
    """
    import yaml

    functions: list[str] = []

    class Loader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no type hints here
        """Reads ``!function module.name`` as its module's name, without importing it."""

    def function(loader: yaml.SafeLoader, node: yaml.Node) -> str:
        spec = str(loader.construct_scalar(node))
        functions.append(spec.rpartition(".")[0])
        return spec

    Loader.add_constructor("!function", function)
    yaml_path = TASKS_DIR / f"{name}.yaml"
    config: dict[str, Any] = yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=Loader)
    data = [TASKS_DIR / path for path in config["dataset_kwargs"]["data_files"].values()]
    modules = [TASKS_DIR / f"{module.replace('.', '/')}.py" for module in dict.fromkeys(functions)]
    return [yaml_path, *data, *modules]


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
            files = _shipped_task_files(task)
            specs.append(str(files[0]))
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


def _not_custom_dataset_notice(record: logging.LogRecord) -> bool:
    """False for lm-eval's warning on every task with a ``custom_dataset`` (all shipped tasks: `--metadata` advice)."""
    return "Custom kwargs can be passed to `--metadata`" not in record.getMessage()


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
    task_logger = logging.getLogger("lm_eval.api.task")
    task_logger.addFilter(_not_custom_dataset_notice)
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
        task_logger.removeFilter(_not_custom_dataset_notice)
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


def _dataset_of(manager: Any, task: str) -> tuple[str, str | None] | None:
    """``(dataset_path, dataset_name)`` of lm-eval task ``task``, read from its YAML (None for groups, tags)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index.get(task)
    if entry is None or entry.yaml_path is None:
        return None
    config = load_yaml(entry.yaml_path, resolve_func=False)  # with its includes: truthfulqa_mc2's is in mc1's
    path = config.get("dataset_path")
    return (str(path), config.get("dataset_name")) if path else None


def _missing_dataset(error: BaseException, indexed: Sequence[str], manager: Any) -> LlmperfError | None:
    """The error to raise when ``error`` is ``datasets`` failing, offline, to find a task's dataset in the cache.

    ``datasets`` raises ``ConnectionError("Couldn't reach '<path>' on the Hub (OfflineModeIsEnabled)")`` from a
    ``FileNotFoundError("Dataset <path> is not cached ...")``: an ``OSError`` in the chain naming the dataset.
    """
    import datasets
    import huggingface_hub.constants

    if not datasets.config.HF_HUB_OFFLINE:
        return None  # the hub is allowed: a failure there is not a missing cache entry
    messages: list[str] = []
    link: BaseException | None = error
    while link is not None and len(messages) < 20:
        if isinstance(link, OSError):
            messages.append(str(link))
        link = link.__cause__ or link.__context__
    for task in indexed:
        dataset = _dataset_of(manager, task)
        if dataset is None or not any(dataset[0] in message for message in messages):
            continue
        path, name = dataset
        config = f" (config {name!r})" if name else ""
        return LlmperfError(
            f"lm-eval task {task!r} needs the Hugging Face dataset {path!r}{config}, which is not in the local "
            f"Hugging Face cache (datasets cache {datasets.config.HF_DATASETS_CACHE}, hub cache "
            f"{huggingface_hub.constants.HF_HUB_CACHE}); nothing is downloaded while HF_HUB_OFFLINE / "
            "HF_DATASETS_OFFLINE are on (pytest-llmperf turns them on unless you set them). To let lm-eval "
            "download it, run with HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0, or score a shipped offline task "
            f"({', '.join(SHIPPED_TASKS)})"
        )
    return None


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
    lm: Any, tasks: Sequence[str], *, limit: int | float | None = None, num_fewshot: int | None = None,
    batch_size: int | str | None = None, seed: int = 1234, **evaluate_kwargs: Any,
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
                log_samples=True,  # per-document scores, for the paired verdict
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=None,  # None: lm-eval does not import torch to seed it
                fewshot_random_seed=seed,
                **evaluate_kwargs,
            )
        except LlmperfError:
            raise
        except Exception as error:
            missing = _missing_dataset(error, indexed, manager) if indexed else None
            if missing is not None:
                raise missing from None  # the message says it all; datasets' traceback would only bury it
            raise LlmperfError(f"lm-eval failed on tasks {list(tasks)}: {type(error).__name__}: {error}") from error
    if output is None:
        raise LlmperfError("lm-eval returned no results (a non-zero rank in a distributed run)")
    metrics, stderr = metrics_from_results(output["results"])
    documents = {task: int(counts["effective"]) for task, counts in output.get("n-samples", {}).items()}
    settings = {"limit": limit, "num_fewshot": num_fewshot, "seed": seed, "tasks": task_fingerprint}
    settings["task_versions"] = dict(output.get("versions", {}))
    per_document = documents_from_samples(output.get("samples") or {}, metrics)
    return AccuracyResult(metrics, stderr, documents, {"accuracy": settings}, per_document)


def documents_from_samples(samples: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, Documents]:
    """Each metric's score per document (``core/paired.py``), from ``simple_evaluate``'s logged samples.

    Kept only for metrics that are the mean of those scores (acc, exact_match, mc2; not a corpus-level BLEU or
    a perplexity), in document order, keyed by lm-eval's hashes of each document, prompt and target.
    """
    rows: dict[str, list[tuple[int, float, str]]] = {}
    for task, entries in samples.items():
        for entry in entries:
            filter_name = entry.get("filter", "none")
            for metric in entry.get("metrics", ()):
                value = _number(entry.get(metric))
                if value is None:
                    continue
                name = f"{task}.{metric}" if filter_name == "none" else f"{task}.{metric},{filter_name}"
                identity = f"{entry.get('doc_hash')}:{entry.get('prompt_hash')}:{entry.get('target_hash')}"
                rows.setdefault(name, []).append((int(entry.get("doc_id", 0)), value, identity))
    per_document: dict[str, Documents] = {}
    for name, found in rows.items():
        if name not in metrics:
            continue
        found.sort(key=lambda row: row[0])
        scores = [score for _, score, _ in found]
        if math.isclose(math.fsum(scores) / len(scores), metrics[name], rel_tol=1e-9, abs_tol=1e-12):
            per_document[name] = Documents.of(scores, [identity for _, _, identity in found])
    return per_document
