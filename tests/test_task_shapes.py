"""The shipped tasks shaped like lm-eval's winogrande and truthfulqa_mc2, lm-eval's CLI on the shipped YAMLs from
any folder, and lm-eval's own tasks whose dataset is not in the local Hugging Face cache."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.engines.llama_cpp import LlamaCppEngine
from pytest_llmperf.engines.openai import OpenAIEngine
from pytest_llmperf.measure.accuracy import SHIPPED_TASKS, TASKS_DIR, evaluate, metrics_from_results, resolve_tasks

MODEL = "q4_k_m"
CONFIG = {"n_threads": 2, "n_ctx": 512}


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(MODEL, **CONFIG)
    yield engine
    engine.close()


def _documents(task: str) -> list[dict[str, Any]]:
    lines = (TASKS_DIR / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _record_loglikelihood(lm: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, tuple[float, bool]]]:
    """Every loglikelihood request lm-eval sends ``lm`` during scoring, with the result the model gave."""
    calls: list[tuple[Any, tuple[float, bool]]] = []
    score = lm.loglikelihood

    def recording(requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool]] = score(requests, disable_tqdm=disable_tqdm)
        calls.extend(zip(requests, results, strict=True))
        return results

    monkeypatch.setattr(lm, "loglikelihood", recording)
    return calls


def _by_document(calls: list[tuple[Any, tuple[float, bool]]]) -> dict[int, list[tuple[Any, float]]]:
    """Each document's requests with the log-likelihood the model gave lm-eval, in choice order."""
    requests: dict[int, list[tuple[Any, float]]] = {}
    for request, (loglikelihood, _) in calls:
        requests.setdefault(request.doc_id, []).append((request, loglikelihood))
    return {doc_id: sorted(group, key=lambda pair: pair[0].idx) for doc_id, group in sorted(requests.items())}


def _assert_asked_directly_agrees(engine: LlamaCppEngine, pairs: list[tuple[str, str]], got: list[float]) -> None:
    """The model's log-likelihood of each ``(context, continuation)``, asked directly, not through a task, is
    what lm-eval got. Not to the last digit: the engine keeps the prefix a request shares with the one before in
    its KV cache, so what it decodes in one batch (and so the rounding) depends on the order of the requests."""
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
    asked = [loglikelihood for loglikelihood, _ in engine.lm_eval_model().loglikelihood(requests)]
    assert asked == pytest.approx(got, abs=0.1), pairs


def test_shipped_documents_have_the_fields_of_the_real_datasets() -> None:
    winogrande = _documents("llmperf_winogrande")
    assert len(winogrande) == 40
    for doc in winogrande:  # allenai/winogrande: one blank, two options, answer "1" or "2"
        assert set(doc) == {"sentence", "option1", "option2", "answer"}
        assert doc["sentence"].count("_") == 1 and doc["answer"] in ("1", "2") and doc["option1"] != doc["option2"]
    assert {doc["answer"] for doc in winogrande} == {"1", "2"}
    truthfulqa = _documents("llmperf_truthfulqa_mc2")
    assert len(truthfulqa) == 40
    for doc in truthfulqa:  # truthfulqa/truthful_qa "multiple_choice"
        assert set(doc) == {"question", "mc1_targets", "mc2_targets"}
        mc1, mc2 = doc["mc1_targets"], doc["mc2_targets"]
        assert mc1["labels"].count(1) == 1 and len(mc1["choices"]) == len(mc1["labels"])
        assert mc2["labels"].count(1) >= 2 and mc2["labels"].count(0) >= 2
        assert len(mc2["choices"]) == len(mc2["labels"]) == len(set(mc2["choices"]))


def test_task_fingerprint_covers_yaml_data_and_functions_module() -> None:
    _, _, fingerprint = resolve_tasks(["llmperf_winogrande"])
    files = ("llmperf_winogrande.yaml", "llmperf_winogrande.jsonl", "task_functions.py")
    digest = hashlib.sha256(b"".join((TASKS_DIR / name).read_bytes() for name in files)).hexdigest()
    assert fingerprint["llmperf_winogrande"] == {"source": "pytest-llmperf", "sha256": digest}


def test_winogrande_scores_the_shared_continuation_after_each_option(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 11  # odd: a swapped answer index (acc -> 1 - acc) cannot give the same score
    lm = engine.lm_eval_model()
    calls = _record_loglikelihood(lm, monkeypatch)
    scores = evaluate(lm, ["llmperf_winogrande"], limit=limit)
    assert list(scores.metrics) == ["llmperf_winogrande.acc"] and scores.documents == {"llmperf_winogrande": limit}
    assert {request.request_type for request, _ in calls} == {"loglikelihood"}
    requests = _by_document(calls)
    assert list(requests) == list(range(limit))
    hits = []
    for doc_id, doc in enumerate(_documents("llmperf_winogrande")[:limit]):
        blank = doc["sentence"].index("_")
        rest = " " + doc["sentence"][blank + 1 :].strip()  # lm-eval's target delimiter, then the shared rest
        pairs = [(doc["sentence"][:blank] + option, rest) for option in (doc["option1"], doc["option2"])]
        assert [request.arguments for request, _ in requests[doc_id]] == pairs  # contexts differ, one continuation
        first, second = [loglikelihood for _, loglikelihood in requests[doc_id]]
        hits.append(float((0 if first >= second else 1) == int(doc["answer"]) - 1))  # argmax: a tie picks the first
        if doc_id < 3:
            _assert_asked_directly_agrees(engine, pairs, [first, second])
    assert 0 < sum(hits) < limit  # both outcomes occur: a score that could not be all hits or all misses
    assert scores["llmperf_winogrande.acc"] == pytest.approx(sum(hits) / limit, abs=1e-9)


def test_truthfulqa_mc2_acc_is_the_normalised_mass_on_true_answers(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 8
    lm = engine.lm_eval_model()
    calls = _record_loglikelihood(lm, monkeypatch)
    scores = evaluate(lm, ["llmperf_truthfulqa_mc2"], limit=limit)
    assert list(scores.metrics) == ["llmperf_truthfulqa_mc2.acc"]
    requests = _by_document(calls)
    assert list(requests) == list(range(limit))
    masses = []
    for doc_id, doc in enumerate(_documents("llmperf_truthfulqa_mc2")[:limit]):
        (context,) = {request.arguments[0] for request, _ in requests[doc_id]}  # one question, each answer after it
        assert context.endswith(f"\n\nQ: {doc['question']}\nA:")
        choices, labels = doc["mc2_targets"]["choices"], doc["mc2_targets"]["labels"]
        pairs = [(context, f" {choice}") for choice in choices]
        assert [request.arguments for request, _ in requests[doc_id]] == pairs
        loglikelihoods = [loglikelihood for _, loglikelihood in requests[doc_id]]
        if doc_id < 2:
            _assert_asked_directly_agrees(engine, pairs, loglikelihoods)
        probabilities = [math.exp(value) for value in loglikelihoods]
        masses.append(sum(p for p, label in zip(probabilities, labels, strict=True) if label == 1) / sum(probabilities))
    assert all(0.0 <= mass <= 1.0 for mass in masses)
    assert any(0.01 < mass < 0.99 for mass in masses), masses  # a probability mass, not a 0/1 hit
    assert scores["llmperf_truthfulqa_mc2.acc"] == pytest.approx(sum(masses) / limit, abs=1e-9)


def test_own_yaml_with_the_shipped_loader_reads_data_beside_it(
    engine: LlamaCppEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "qa.jsonl").write_text(
        "".join(json.dumps({"q": f"{n} plus one is", "a": n + 1}) + "\n" for n in range(3))
    )
    (folder / "qa.yaml").write_text(
        "task: my_beside_qa\n"
        "custom_dataset: !function pytest_llmperf.assets.tasks.task_functions.load_jsonl\n"
        "dataset_kwargs:\n  data_files:\n    test: qa.jsonl\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: ["{{a}}", "{{a + 5}}"]\ndoc_to_target: 0\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the data file is relative to the YAML, not to here
    scores = evaluate(engine.lm_eval_model(), [str(folder / "qa.yaml")])
    assert scores.documents == {"my_beside_qa": 3}


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """``llama_cpp.server`` serving the same file as ``engine`` on 127.0.0.1, stopped afterwards."""
    engine = OpenAIEngine(launch="llama_cpp_server", model=MODEL, server_args=["--n_ctx", "512", "--n_threads", "2"])
    try:
        yield engine.base_url
    finally:
        engine.close()


def test_lm_eval_cli_runs_every_shipped_task_from_another_folder(
    engine: LlamaCppEngine, server_url: str, tmp_path: Path
) -> None:
    """lm-eval's own CLI, in a folder without the data files, on the shipped YAMLs, against a real model."""
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "gguf", "--model_args", f"base_url={server_url}"]
    command += ["--tasks", ",".join(SHIPPED_TASKS), "--include_path", str(TASKS_DIR), "--limit", "3"]
    command += ["--output_path", str(tmp_path / "results")]
    environment = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    (results_path,) = (tmp_path / "results").rglob("results_*.json")
    metrics, _ = metrics_from_results(json.loads(results_path.read_text())["results"])
    assert {name.partition(".")[0] for name in metrics} == set(SHIPPED_TASKS)
    # The CLI's scores are the in-process ones on the same file: a hit or miss exactly; a probability mass to the
    # rounding the engines' different decode batches give the log-likelihoods (see _assert_asked_directly_agrees).
    ours = evaluate(engine.lm_eval_model(), ["llmperf_arc", "llmperf_winogrande", "llmperf_truthfulqa_mc2"], limit=3)
    assert set(ours.metrics) <= set(metrics)
    for name, value in ours.metrics.items():
        assert metrics[name] == pytest.approx(value, abs=0.02 if "truthfulqa" in name else 1e-9), name


MISSING_DATASET = """
import json
import sys

from pytest_llmperf.engines.llama_cpp import LlamaCppEngine
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.accuracy import evaluate

engine = LlamaCppEngine("q4_k_m", n_threads=1, n_ctx=512)
errors = {}
for task in sys.argv[1:]:
    try:
        evaluate(engine.lm_eval_model(), [task], limit=1)
    except LlmperfError as error:
        errors[task] = {"message": str(error), "traceback_hidden": error.__suppress_context__}
print(json.dumps(errors))
"""


def test_lm_eval_task_without_cached_dataset_says_so(tmp_path: Path) -> None:
    # A fresh process: `datasets` reads HF_HOME / HF_DATASETS_CACHE once, when imported (this one already has).
    cache = tmp_path / "hf"
    offline_switches = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # unset: pytest-llmperf's offline default applies
    environment = {key: value for key, value in os.environ.items() if key not in offline_switches}
    environment.update(HF_HOME=str(cache), HF_DATASETS_CACHE=str(cache / "datasets"))
    tasks = {
        "arc_easy": "'allenai/ai2_arc' (config 'ARC-Easy')",
        "winogrande": "'allenai/winogrande' (config 'winogrande_xl')",
    }
    command = [sys.executable, "-c", MISSING_DATASET, *tasks]
    run = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    errors = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(errors) == set(tasks)
    for task, dataset in tasks.items():
        message = errors[task]["message"]
        assert message.startswith(f"lm-eval task {task!r} needs the Hugging Face dataset {dataset}, "), message
        assert f"not in the local Hugging Face cache (datasets cache {cache / 'datasets'}, hub cache " in message
        assert "nothing is downloaded" in message and "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0" in message
        assert errors[task]["traceback_hidden"], task  # no datasets traceback under it
    assert not any(cache.rglob("*.arrow")), "nothing may be downloaded"
