"""lm_eval_scorer on openai engines: lm-eval's own server model types against a real llama_cpp.server.

lm-eval is imported inside the tests, never at collection: pytester's in-process runs (test_docs_examples)
restore sys.modules afterwards, and a half-imported lm-eval (its registry kept, its metrics dropped) fails
the next import with "'aggregation' alias 'bypass' already registered".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmperf.engines.llama_cpp import LlamaCppEngine
from pytest_llmperf.engines.openai import OpenAIEngine
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.accuracy import TASKS_DIR, evaluate

MODEL = "addition-partial-f16"  # trained: its scores are far from chance, so agreement means something
SERVER = {"launch": "llama_cpp_server", "model": MODEL, "server_args": ["--n_threads", "1", "--n_ctx", "512"]}


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIEngine]:
    engine = OpenAIEngine(**SERVER)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[OpenAIEngine]:
    engine = OpenAIEngine(launch="llama_cpp_server", model="f16", server_args=SERVER["server_args"])
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def in_process() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(MODEL, n_threads=1, n_ctx=512)
    yield engine
    engine.close()


def _requests(pairs: list[tuple[str, str]]) -> list[Any]:
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]


PAIRS = [("12+34=", "46"), ("12+34=", "47"), ("7+8=", "15"), ("90+9=", "99"), ("5+5", "=10"), ("1", "+1=2")]


def test_server_loglikelihoods_equal_the_in_process_ones(server: OpenAIEngine, in_process: LlamaCppEngine) -> None:
    through_server = server.lm_eval_model().loglikelihood(_requests(PAIRS))
    here = in_process.lm_eval_model().loglikelihood(_requests(PAIRS))
    for (served, served_greedy), (local, local_greedy), pair in zip(through_server, here, PAIRS, strict=True):
        assert served == pytest.approx(local, abs=1e-4), pair
        assert served_greedy == local_greedy, pair
    assert through_server[0][0] > through_server[1][0]  # the sum is likelier than a near miss: a real model


def test_an_empty_context_is_refused_naming_why(server: OpenAIEngine) -> None:
    """lm-eval conditions an empty context on BOS; llama_cpp.server echoes no log-probability for a prompt's
    first token, so that one cannot be had through it."""
    with pytest.raises(LlmperfError, match="first token"):
        server.lm_eval_model().loglikelihood(_requests([("", "1+1=2")]))


def test_server_tokenizer_is_the_servers_without_its_bos(server: OpenAIEngine, in_process: LlamaCppEngine) -> None:
    from pytest_llmperf.engines.openai_lm import ServerTokenizer

    tokenizer = ServerTokenizer(server)
    assert tokenizer.bos_token_id == 1
    text = "Question: 12+34=46\n\n  spaced"
    tokens = tokenizer.encode(text)
    assert tokens == in_process.lm_eval_model().tok_encode(text)[1:]  # llama.cpp's own ids, BOS dropped
    assert tokenizer.decode([1, *tokens]) == text


def test_server_accuracy_equals_the_in_process_scorer(server: OpenAIEngine, in_process: LlamaCppEngine) -> None:
    tasks = ["llmperf_addition_mc", "llmperf_addition"]
    served = evaluate(server.lm_eval_model(), tasks, limit=40)
    local = evaluate(in_process.lm_eval_model(), tasks, limit=40)
    assert served.metrics == pytest.approx(local.metrics, abs=1e-9)
    assert 0.3 < served["llmperf_addition_mc.acc"] < 1.0 and served["llmperf_addition.exact_match"] > 0.3


def test_concurrent_requests_score_the_same(server: OpenAIEngine) -> None:
    """lm-eval's num_concurrent sends the requests from asyncio (another code path to the same parser)."""
    tasks = ["llmperf_addition_mc", "llmperf_addition"]
    one = evaluate(server.lm_eval_model(), tasks, limit=12)
    many = evaluate(server.lm_eval_model(num_concurrent=3), tasks, limit=12)
    assert many.metrics == one.metrics and one["llmperf_addition_mc.acc"] > 0.3


def _lm_eval_cli(server: OpenAIEngine, task: str, limit: int, folder: Path) -> dict[str, float]:
    """lm-eval's own CLI against ``server``, run from an unrelated folder as a user would.

    The CLI's ``local-completions`` needs a Hugging Face tokenizer for log-likelihoods, which a GGUF-only setup
    does not have offline; the CLI scores with lm-eval's ``gguf`` model type (text offsets, no tokenizer)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "lm_eval", "--model", "gguf", "--model_args", f"base_url={server.base_url}",
               "--tasks", task, "--include_path", str(TASKS_DIR), "--limit", str(limit),
               "--output_path", str(folder / "out")]
    run = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (result_file,) = (folder / "out").rglob("results_*.json")
    results: dict[str, float] = json.loads(result_file.read_text())["results"][task]
    return results


def test_server_accuracy_equals_lm_eval_cli_on_the_same_server(embedded_server: OpenAIEngine, tmp_path: Path) -> None:
    """The embedded model rarely ends at EOS, so the server's echo ends with a generated token, as lm-eval's
    parsers assume: the CLI and the scorer agree."""
    cli = _lm_eval_cli(embedded_server, "llmperf_arc", 40, tmp_path)
    ours = evaluate(embedded_server.lm_eval_model(), ["llmperf_arc"], limit=40)
    assert ours["llmperf_arc.acc"] == pytest.approx(cli["acc,none"], abs=1e-9)
    assert ours["llmperf_arc.acc_norm"] == pytest.approx(cli["acc_norm,none"], abs=1e-9)


def test_lm_eval_cli_drops_the_last_token_where_the_server_ends_at_eos(
    server: OpenAIEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trained model ends at EOS after its answer; llama_cpp.server then echoes no generated token, and
    lm-eval's ``[ctxlen:-1]`` slice (gguf and local-completions alike) drops the answer's last digit. The CLI's
    number is exactly the scorer's with lm-eval's own parser, and differs from the in-process (right) one."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from pytest_llmperf.engines.openai_lm import ServerCompletionsLM

    cli = _lm_eval_cli(server, "llmperf_addition_mc", 40, tmp_path)
    ours = evaluate(server.lm_eval_model(), ["llmperf_addition_mc"], limit=40)
    monkeypatch.setattr(ServerCompletionsLM, "parse_logprobs", staticmethod(LocalCompletionsAPI.parse_logprobs))
    with_lm_evals_parser = evaluate(server.lm_eval_model(), ["llmperf_addition_mc"], limit=40)
    assert with_lm_evals_parser["llmperf_addition_mc.acc"] == pytest.approx(cli["acc,none"], abs=1e-9)
    assert ours["llmperf_addition_mc.acc"] > cli["acc,none"] + 0.1


def test_every_shipped_task_shape_scores_through_the_server_as_in_process(embedded_server: OpenAIEngine) -> None:
    """ARC-, HellaSwag-, GSM8K-, Winogrande- and TruthfulQA-mc2-shaped tasks: every request type lm-eval makes
    for them (loglikelihood with shared contexts, partial contexts with a shared continuation, generation)."""
    tasks = ["llmperf_arc", "llmperf_hellaswag", "llmperf_gsm", "llmperf_winogrande", "llmperf_truthfulqa_mc2"]
    engine = LlamaCppEngine("f16", n_threads=1, n_ctx=512)
    try:
        local = evaluate(engine.lm_eval_model(), tasks, limit=8)
    finally:
        engine.close()
    served = evaluate(embedded_server.lm_eval_model(), tasks, limit=8)
    assert set(served.metrics) == set(local.metrics) and len(served.metrics) == 7
    # 0/1 scores agree exactly. mc2's probability mass sums exp(log-likelihood) over answers of many tokens, and
    # the two paths' log-probabilities differ in their last digits (one batch of the whole prompt on the server,
    # context then one token at a time in-process): measured 1.4e-4 apart on 8 questions.
    mc2 = "llmperf_truthfulqa_mc2.acc"
    assert served[mc2] == pytest.approx(local[mc2], abs=1e-3) and 0.0 < served[mc2] < 1.0
    assert {k: v for k, v in served.metrics.items() if k != mc2} == {k: v for k, v in local.metrics.items() if k != mc2}
    assert served.documents == {task: 8 for task in tasks}


def test_without_a_tokenize_route_generation_runs_and_loglikelihood_names_the_option() -> None:
    engine = OpenAIEngine(**SERVER, tokenize=None)
    try:
        scores = evaluate(engine.lm_eval_model(), ["llmperf_addition"], limit=10)
        assert scores["llmperf_addition.exact_match"] > 0.0
        with pytest.raises(LlmperfError, match=r"model_args=\{'tokenizer'"):
            evaluate(engine.lm_eval_model(), ["llmperf_addition_mc"], limit=2)
    finally:
        engine.close()


def test_a_server_without_prompt_logprobs_is_named_with_the_option_that_helps() -> None:
    engine = OpenAIEngine(**{**SERVER, "server_args": [*SERVER["server_args"], "--logits_all", "False"]})
    try:
        with pytest.raises(LlmperfError, match=r"logits_all.*'True'"):
            evaluate(engine.lm_eval_model(), ["llmperf_addition_mc"], limit=2)
    finally:
        engine.close()


def test_chat_endpoint_scores_generation_and_refuses_loglikelihood_naming_the_endpoint() -> None:
    engine = OpenAIEngine(**SERVER, endpoint="chat")
    try:
        lm = engine.lm_eval_model()
        scores = evaluate(lm, ["llmperf_addition"], limit=5, apply_chat_template=True)
        per_question = scores.per_document["llmperf_addition.exact_match"].scores
        assert scores.documents["llmperf_addition"] == 5 and len(per_question) == 5
        assert scores["llmperf_addition.exact_match"] == pytest.approx(sum(per_question) / 5)
        with pytest.raises(LlmperfError, match="endpoint='completions'"):
            evaluate(engine.lm_eval_model(), ["llmperf_addition_mc"], limit=2, apply_chat_template=True)
    finally:
        engine.close()


def test_unknown_model_args_are_named(server: OpenAIEngine) -> None:
    with pytest.raises(LlmperfError, match="num_concurent"):
        server.lm_eval_model(num_concurent=4)
