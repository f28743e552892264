"""The ``!function`` hooks of the shipped lm-eval tasks (lm-eval loads this file from beside their YAMLs).

- ``load_jsonl``: every shipped task's ``custom_dataset``, so that its ``data_files`` are read relative to the
  YAML's folder, not to the current directory: lm-eval's CLI then runs them from any folder. A task YAML of
  your own can name it too: ``custom_dataset: !function pytest_llmperf.assets.tasks.task_functions.load_jsonl``.
- ``winogrande_*``: the partial evaluation of lm-eval's ``winogrande`` task.
- ``truthfulqa_mc2_results``: the score of lm-eval's ``truthfulqa_mc2`` task.

Written for this project, mirroring the lm-eval task code named in each docstring: this module does not import
lm-eval's task modules (they pull in sacrebleu, rouge and friends, and move between releases).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent


def load_jsonl(data_files: Mapping[str, str], **metadata: Any) -> Any:
    """The ``datasets.DatasetDict`` of ``data_files`` (split -> JSONL path), relative paths read from the folder
    of the task YAML that names this loader, not from the current directory.

    lm-eval calls a task's ``custom_dataset`` with the task's ``metadata`` and ``dataset_kwargs`` as keyword
    arguments (``ConfigurableTask.download``); its metadata holds ``config_source``, the YAML's path ("inline"
    for a task given as a dict: then this module's folder, the shipped YAMLs' own).
    """
    import datasets

    source = str(metadata.get("config_source", "inline"))
    folder = Path(source).resolve().parent if source != "inline" else TASKS_DIR
    paths = {split: str(folder / path) for split, path in data_files.items()}
    return datasets.load_dataset("json", data_files=paths)


# Winogrande: a sentence with a blank "_" and two options. The context differs per option (the sentence up to
# the blank with that option filled in) and the continuation after the blank is shared: the model is scored on
# how likely the rest of the sentence is after each option. Mirrors lm_eval/tasks/winogrande/
# preprocess_winogrande.py (lm-eval takes an int from doc_to_text as "one context per choice").


def winogrande_answer_index(doc: Mapping[str, Any]) -> int:
    """The index of the right option: ``answer`` is ``"1"`` or ``"2"`` (``doc_to_text``)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_continuation(doc: Mapping[str, Any]) -> str:
    """The sentence after the blank, shared by both options (``doc_to_target``)."""
    sentence: str = doc["sentence"]
    return sentence[sentence.index("_") + 1 :].strip()


def winogrande_partial_contexts(doc: Mapping[str, Any]) -> list[str]:
    """The sentence up to the blank with each option filled in (``doc_to_choice``)."""
    sentence: str = doc["sentence"]
    blank = sentence.index("_")
    return [sentence[:blank] + option for option in (doc["option1"], doc["option2"])]


def truthfulqa_mc2_results(doc: Mapping[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """``acc``: the probability mass on the true answers, normalised over all answers (``process_results``).

    Mirrors ``process_results_mc2`` in lm_eval/tasks/truthfulqa/utils.py: ``exp`` of each answer's
    log-likelihood, normalised to sum to 1, summed over the answers labelled 1. The largest log-likelihood is
    subtracted first: the same value, and still defined when every ``exp`` would underflow to 0.
    """
    import numpy as np

    loglikelihoods = np.array([loglikelihood for loglikelihood, _ in results], dtype=np.float64)
    probabilities = np.exp(loglikelihoods - loglikelihoods.max())
    probabilities /= probabilities.sum()
    labels = np.array(doc["mc2_targets"]["labels"])
    return {"acc": float(probabilities[labels == 1].sum())}
