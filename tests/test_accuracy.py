"""lm_eval_scorer: lm-eval's evaluator on the real llama.cpp engine, gated like any metric."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmperf.assets.tasks import generate
from pytest_llmperf.engines.llama_cpp import LlamaCppEngine, resolve_model
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.accuracy import SHIPPED_TASKS, evaluate, metrics_from_results

CONFIG = {"n_threads": 2, "n_ctx": 512}


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine("q4_k_m", **CONFIG)
    yield engine
    engine.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``llama_cpp.server`` serving the same Q4_K_M file on 127.0.0.1, stopped afterwards."""
    port = _free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model("q4_k_m"))]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "2"]
    # A file, not a pipe: llama.cpp logs more than a pipe buffer holds while loading, and would block.
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = log_path.open("wb")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start: {log_path.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_scores_equal_lm_eval_gguf_model_against_llama_cpp_server(engine: LlamaCppEngine, server_url: str) -> None:
    """The in-process adapter and lm-eval's own ``gguf`` model type, on the same file, give the same accuracy."""
    from lm_eval.api.registry import get_model

    tasks = ["llmperf_arc", "llmperf_hellaswag"]
    ours = evaluate(engine.lm_eval_model(), tasks, limit=20)
    theirs = evaluate(get_model("gguf").create_from_arg_string(f"base_url={server_url}"), tasks, limit=20)
    assert set(ours.metrics) == {f"{task}.{metric}" for task in tasks for metric in ("acc", "acc_norm")}
    for name, value in ours.metrics.items():
        assert value == pytest.approx(theirs.metrics[name], abs=1e-6), name
    assert ours.documents == {"llmperf_arc": 20, "llmperf_hellaswag": 20}


def test_generation_task_is_scored_by_exact_match(engine: LlamaCppEngine) -> None:
    scores = evaluate(engine.lm_eval_model(), ["llmperf_gsm"], limit=4)
    assert list(scores.metrics) == ["llmperf_gsm.exact_match,flexible-extract"]
    # The score is the mean of the four questions' 0/1 scores, each question scored once.
    per_question = scores.per_document["llmperf_gsm.exact_match,flexible-extract"].scores
    assert len(per_question) == 4 and set(per_question) <= {0.0, 1.0}
    assert scores["llmperf_gsm.exact_match,flexible-extract"] == pytest.approx(sum(per_question) / 4)
    assert scores.stderr["llmperf_gsm.exact_match,flexible-extract"] is not None


def test_loglikelihood_rolling_sums_every_token(engine: LlamaCppEngine) -> None:
    """Rolling log-likelihood of a text equals the log-likelihood of that text after BOS."""
    from lm_eval.api.instance import Instance

    lm = engine.lm_eval_model()
    text = "Ana has seven apples and buys two more."
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    tokens = lm.tok_encode(text, add_special_tokens=False)
    ((direct, _),) = lm._loglikelihood_tokens([((None, text), [lm.prefix_token_id], tokens)])
    assert rolling == [pytest.approx(direct, abs=1e-4)]
    assert rolling[0] < 0


def test_shipped_tasks_are_what_the_generator_writes() -> None:
    for task in SHIPPED_TASKS:
        data = {"llmperf_addition_mc": "llmperf_addition"}.get(task, task)  # both addition tasks read one file
        assert (generate.TASKS_DIR / f"{data}.jsonl").read_text(encoding="utf-8") == generate.render(task), task


def test_metric_names_and_stderr_from_lm_eval_results() -> None:
    results = {
        "arc": {"alias": "arc", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25},
        "gsm": {"exact_match,strict": 0.75, "exact_match_stderr,strict": "N/A", "sample_len": 4},
    }
    metrics, stderr = metrics_from_results(results)
    assert metrics == {"arc.acc": 0.5, "arc.acc_norm": 0.25, "gsm.exact_match,strict": 0.75}
    assert stderr == {"arc.acc": 0.1, "arc.acc_norm": None, "gsm.exact_match,strict": None}


def test_unknown_task_name_is_named(engine: LlamaCppEngine) -> None:
    with pytest.raises(LlmperfError, match=r"lm-eval knows no task 'arc_eazy' \(did you mean 'arc_easy'\?\)"):
        evaluate(engine.lm_eval_model(), ["arc_eazy"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("task: [unclosed\n", "does not parse"),
        ("just a string\n", "is not a task config"),
    ],
)
def test_bad_task_yaml_is_named(engine: LlamaCppEngine, tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "my_task.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LlmperfError, match=f"lm-eval task file '{path}' {message}"):
        evaluate(engine.lm_eval_model(), [str(path)])


def test_user_task_yaml_runs(engine: LlamaCppEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"q": f"{n} plus one is", "a": n + 1}) + "\n" for n in range(3)))
    config = tmp_path / "qa.yaml"
    config.write_text(
        "task: my_qa\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: ["{{a}}", "{{a + 5}}"]\ndoc_to_target: 0\n'
    )
    scores = evaluate(engine.lm_eval_model(), [str(config)])
    assert set(scores.metrics) == {"my_qa.acc", "my_qa.acc_norm"}
    assert scores.documents == {"my_qa": 3}
    assert "HF_HUB_OFFLINE" not in os.environ  # offline while scoring, the user's environment afterwards


SCORED = """
import pytest

@pytest.mark.perf
def test_accuracy(engine_factory, lm_eval_scorer):
    engine = engine_factory("llama_cpp", model="q4_k_m", n_threads=2, n_ctx=512)
    lm_eval_scorer(engine, ["llmperf_arc"], limit=8)
"""


def test_accuracy_regression_fails_like_a_throughput_regression(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scored=SCORED)
    # In a subprocess: pyarrow (under lm-eval's datasets) cannot be imported twice into one process.
    pytester.runpytest = pytester.runpytest_subprocess  # type: ignore[method-assign]
    args = ("-m", "perf", "-p", "no:cacheprovider")
    pytester.runpytest(*args, "--update-baselines").assert_outcomes(passed=1)
    path = pytester.path / "baselines/test_scored/test_accuracy.json"
    stored = json.loads(path.read_text())
    acc = stored["metrics"]["llmperf_arc.acc"]
    assert acc["direction"] == "higher" and acc["unit"] == "score" and acc["stderr"] > 0
    assert stored["fingerprint"]["accuracy"]["tasks"]["llmperf_arc"]["source"] == "pytest-llmperf"

    pytester.runpytest(*args).assert_outcomes(passed=1)  # greedy scoring repeats exactly

    recorded = acc["value"]
    # A baseline the model cannot reach: the current score is a regression. Its documents no longer average to
    # its value, so the paired rule stands aside and the value alone is judged.
    acc["value"] = recorded + 0.5
    acc["samples"] = [recorded + 0.5]
    path.write_text(json.dumps(stored))
    regressed = pytester.runpytest(*args)
    regressed.assert_outcomes(failed=1)
    regressed.stdout.fnmatch_lines(
        [
            "*performance regression in test_scored.py::test_accuracy*",
            f"*llmperf_arc.acc: {recorded + 0.5:.4g} -> {recorded:.4g} (-*%, tolerance 0)*",
            "*accept them with: pytest -m perf --update-baselines test_scored.py::test_accuracy*",
        ]
    )
    pytester.runpytest(*args, "--update-baselines").assert_outcomes(passed=1)
    assert json.loads(path.read_text())["metrics"]["llmperf_arc.acc"]["value"] == recorded
