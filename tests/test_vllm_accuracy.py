"""lm-eval scoring on the vllm engine's own ``LLM``, against the fake ``vllm`` (shaped like 0.33.0's API).

The fake's numbers come from its ``ToyModel`` (log-softmax over seeded logits of the two previous tokens), so every
expected score here is computed from the toy model directly, not through the scorer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_llmperf.engines import create_engine
from pytest_llmperf.errors import EngineError
from pytest_llmperf.measure.accuracy import TASKS_DIR, evaluate
from tests import fake_vllm

TOY = fake_vllm.ToyModel(seed=0)  # the seed the engine's LLM gets by default
TOKENIZER = fake_vllm.Tokenizer()


@pytest.fixture
def vllm(monkeypatch: pytest.MonkeyPatch) -> object:
    return fake_vllm.install(monkeypatch)


def hand_loglikelihood(context: Sequence[int], continuation: Sequence[int]) -> float:
    whole = [*context, *continuation]
    return sum(float(TOY.next_log_probs(whole[:i])[whole[i]]) for i in range(len(context), len(whole)))


def arc_expected(limit: int) -> dict[str, float]:
    """acc and acc_norm of the toy model on the first ``limit`` llmperf_arc questions, by hand."""
    lines = (TASKS_DIR / "llmperf_arc.jsonl").read_text(encoding="utf-8").splitlines()[:limit]
    acc, acc_norm = [], []
    for doc in map(json.loads, lines):
        context = TOKENIZER.encode(f"Question: {doc['question']}\nAnswer:")  # BOS added, as HF tokenizers do
        texts = doc["choices"]["text"]
        lls = np.array(
            [hand_loglikelihood(context, TOKENIZER.encode(f" {t}", add_special_tokens=False)) for t in texts]
        )
        gold = doc["choices"]["label"].index(doc["answerKey"])
        acc.append(float(np.argmax(lls) == gold))
        acc_norm.append(float(np.argmax(lls / np.array([len(t) for t in texts])) == gold))
    return {"llmperf_arc.acc": float(np.mean(acc)), "llmperf_arc.acc_norm": float(np.mean(acc_norm))}


def hand_greedy_text(context: str, max_tokens: int, until: Sequence[str]) -> str:
    tokens = TOY.greedy(TOKENIZER.encode(context), max_tokens)
    text = TOKENIZER.decode(tokens[:-1] if tokens and tokens[-1] == fake_vllm.EOS else tokens)
    for stop in until:
        text = text.split(stop)[0]
    return text


def test_multiple_choice_accuracy_is_the_toy_models(vllm: object) -> None:
    engine = create_engine("vllm", {"model": "org/toy"})
    scores = evaluate(engine.lm_eval_model(), ["llmperf_arc"], limit=10)
    expected = arc_expected(10)
    assert scores.metrics == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected["llmperf_arc.acc"] < 1.0  # neither all right nor all wrong: a wrong sum shows
    assert scores.documents == {"llmperf_arc": 10}
    llm = fake_vllm.LLM.instances[-1]
    ((prompts, params),) = llm.state["calls"]  # 40 requests (10 questions x 4 choices): one generate call
    assert len(prompts) == 40 and all(set(prompt) == {"prompt_token_ids"} for prompt in prompts)
    assert (params.temperature, params.prompt_logprobs, params.max_tokens, params.detokenize) == (0, 1, 1, False)
    assert llm.state["use_tqdm"] == [False]


def test_loglikelihood_and_greedy_per_request(vllm: object) -> None:
    from lm_eval.api.instance import Instance

    lm = create_engine("vllm", {"model": "org/toy"}).lm_eval_model()
    context_text = "Question: What is 3 times 2?\nAnswer:"
    context = TOKENIZER.encode(context_text)
    greedy = TOY.greedy(context, 4)
    assert fake_vllm.EOS not in greedy
    greedy_text = TOKENIZER.decode(greedy)
    requests = [Instance("loglikelihood", {}, (context_text, text), 0) for text in (greedy_text, " 6", " 17")]
    results = lm.loglikelihood(requests)
    assert results[0] == (pytest.approx(hand_loglikelihood(context, greedy), abs=1e-12), True)
    for (ll, is_greedy), text in zip(results[1:], (" 6", " 17"), strict=True):
        assert ll == pytest.approx(hand_loglikelihood(context, TOKENIZER.encode(text, add_special_tokens=False)))
        assert is_greedy is False


def test_requests_go_in_chunks_and_come_back_in_order(vllm: object) -> None:
    from pytest_llmperf.engines.vllm_lm import VllmLM

    engine = create_engine("vllm", {"model": "org/toy"})
    llm = fake_vllm.LLM.instances[-1]
    requests = [(None, [1, 40 + n, 50], [60 + n % 7, 70]) for n in range(40)]
    results = VllmLM(llm, batch_size=16)._loglikelihood_tokens(requests)
    assert [len(prompts) for prompts, _ in llm.state["calls"]] == [16, 16, 8]
    assert [ll for ll, _ in results] == pytest.approx([hand_loglikelihood(c, x) for _, c, x in requests], abs=1e-12)
    assert results == engine.lm_eval_model()._loglikelihood_tokens(requests)  # one call: the same answers


def test_generation_task_scores_the_toy_models_greedy_text(vllm: object, tmp_path: Path) -> None:
    """A generate_until task whose targets are the toy model's greedy answers for 2 of its 3 questions."""
    questions = ["What is 2 plus 3?", "What is 7 minus 4?", "What is 6 times 5?"]
    answers = [hand_greedy_text(q, 8, ["\n", "</s>"]) for q in questions]
    assert all(answers) and len(set(answers)) == 3
    data = tmp_path / "qa.jsonl"
    targets = [answers[0], answers[1], answers[2] + "?"]  # the last one the model does not say
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in zip(questions, targets, strict=True)))
    config = tmp_path / "toy_qa.yaml"
    config.write_text(
        "task: toy_qa\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "output_type: generate_until\ntest_split: test\n"
        'doc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    engine = create_engine("vllm", {"model": "org/toy"})
    scores = evaluate(engine.lm_eval_model(), [str(config)])
    assert scores.metrics == {"toy_qa.exact_match": pytest.approx(2 / 3)}
    ((prompts, params),) = fake_vllm.LLM.instances[-1].state["calls"]
    assert [prompt["prompt_token_ids"] for prompt in prompts] == [TOKENIZER.encode(q) for q in questions]
    assert params[0].stop == ["\n", "</s>"]  # lm-eval adds the EOS text to `until`
    assert (params[0].max_tokens, params[0].temperature, params[0].skip_special_tokens) == (8, 0.0, False)


def test_shipped_generation_task_runs(vllm: object) -> None:
    scores = evaluate(create_engine("vllm", {"model": "org/toy"}).lm_eval_model(), ["llmperf_gsm"], limit=3)
    assert list(scores.metrics) == ["llmperf_gsm.exact_match,flexible-extract"]
    assert scores.metrics["llmperf_gsm.exact_match,flexible-extract"] == 0.0  # the toy model answers gibberish


def test_the_engines_llm_is_reused_not_built_again(vllm: object) -> None:
    engine = create_engine("vllm", {"model": "org/toy", "max_num_seqs": 8})
    assert len(fake_vllm.LLM.instances) == 1
    lm = engine.lm_eval_model()
    evaluate(lm, ["llmperf_arc"], limit=2)
    evaluate(engine.lm_eval_model(), ["llmperf_gsm"], limit=1)
    assert len(fake_vllm.LLM.instances) == 1
    assert lm._llm is fake_vllm.LLM.instances[0] and len(fake_vllm.LLM.instances[0].state["calls"]) == 2
    assert engine.lm_eval_model(batch_size="auto", max_gen_toks=8).max_gen_toks == 8
    with pytest.raises(EngineError, match=r"takes model_args \['batch_size', 'max_gen_toks'\], got \['pretrained'\]"):
        engine.lm_eval_model(pretrained="org/other")  # lm-eval's way to load a model: not here
    assert len(fake_vllm.LLM.instances) == 1
    engine.close()
    with pytest.raises(EngineError, match="the vllm engine is closed"):
        engine.lm_eval_model()


def test_a_request_longer_than_max_model_len_loses_its_oldest_context(vllm: object) -> None:
    lm = create_engine("vllm", {"model": "org/toy", "max_model_len": 16}).lm_eval_model()
    assert lm.max_length == 16
    context = TOKENIZER.encode("Question: What is 45 minus 16?")
    assert len(context) == 14
    kept = 15  # max_model_len - 1: vLLM needs room for one generated token
    for continuation_text, ctxlen in ((" 29", kept - 3), (" 29 or 39, may", 1)):
        continuation = TOKENIZER.encode(continuation_text, add_special_tokens=False)
        ((ll, _),) = lm._loglikelihood_tokens([(None, context, continuation)])
        prompt = (context + continuation)[-kept:]
        assert prompt[ctxlen:] == continuation
        assert ll == pytest.approx(hand_loglikelihood(prompt[:ctxlen], continuation), abs=1e-12)
    # With one context token left, the first continuation token is predicted from it alone: the score moved.
    assert ll != pytest.approx(hand_loglikelihood(context, continuation))
    ((prompts, _), *_) = fake_vllm.LLM.instances[-1].state["calls"]
    assert len(prompts[0]["prompt_token_ids"]) == kept
    too_long = TOKENIZER.encode(" 29 or 39, mayb", add_special_tokens=False)  # 15 tokens: no context left
    with pytest.raises(EngineError, match=r"continuation of 15 tokens does not fit .*max_model_len=16"):
        lm._loglikelihood_tokens([(None, context, too_long)])


def test_flat_logprobs_whose_first_position_is_empty(vllm: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's ``FlatLogprobs`` reads position 0 as ``{}``, not ``None``: the same scores as the list form."""
    from pytest_llmperf.engines.vllm_lm import continuation_score

    engine = create_engine("vllm", {"model": "org/toy"})
    requests = [(None, [1, 40, 50], [60, 70]), (None, [1], [44, 45, 46])]
    plain = engine.lm_eval_model()._loglikelihood_tokens(requests)
    monkeypatch.setitem(fake_vllm._SAMPLING_DEFAULTS, "flat_logprobs", True)  # every request asks for flat ones
    flat = engine.lm_eval_model()._loglikelihood_tokens(requests)
    assert flat == plain
    llm = fake_vllm.LLM.instances[-1]
    (output,) = llm.generate([[1, 44, 45, 46]], fake_vllm.SamplingParams(prompt_logprobs=1, max_tokens=1))
    assert isinstance(output.prompt_logprobs, fake_vllm.FlatLogprobs) and output.prompt_logprobs[0] == {}
    assert continuation_score([1, 44, 45, 46], output.prompt_logprobs, 1) == plain[1]


def test_rolling_loglikelihood_scores_every_token_once(vllm: object) -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    text = "Ana has seven apples and buys two more."
    tokens = TOKENIZER.encode(text, add_special_tokens=False)
    whole = create_engine("vllm", {"model": "org/toy"}).lm_eval_model()
    assert whole.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)]) == [
        pytest.approx(hand_loglikelihood([fake_vllm.BOS], tokens), abs=1e-12)
    ]
    windowed = create_engine("vllm", {"model": "org/toy", "max_model_len": 12}).lm_eval_model()
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, fake_vllm.BOS, 10, 1)]
    assert len(windows) == 4 and [t for _, predicted in windows for t in predicted] == tokens
    rolling = windowed.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert rolling == [pytest.approx(sum(hand_loglikelihood(c, p) for c, p in windows), abs=1e-12)]


def test_the_fake_checks_requests_as_vllm_does(vllm: object) -> None:
    exceptions = fake_vllm.VLLMValidationError
    with pytest.raises(exceptions, match="max_tokens must be at least 1, got 0"):
        fake_vllm.SamplingParams(max_tokens=0)
    with pytest.raises(exceptions, match="stop strings are only supported when detokenize is True"):
        fake_vllm.SamplingParams(stop=["\n"], detokenize=False)
    llm = fake_vllm.LLM("org/toy", max_model_len=8)
    with pytest.raises(exceptions, match="Requested prompt logprobs of 21, which is greater than max allowed: 20"):
        llm.generate([[1, 5]], fake_vllm.SamplingParams(prompt_logprobs=21))
    with pytest.raises(exceptions, match=r"prompt \(length 8\) plus the number of requested output tokens"):
        llm.generate([list(range(1, 9))])
    with pytest.raises(exceptions, match=r"lengths of prompts \(2\) and params \(1\)"):
        llm.generate([[1, 5], [1, 6]], [fake_vllm.SamplingParams()])
    (output,) = llm.generate({"prompt_token_ids": [1, 40, 50]}, fake_vllm.SamplingParams(prompt_logprobs=1))
    first, second = output.prompt_logprobs[1:]
    assert output.prompt_logprobs[0] is None and len(output.prompt_logprobs) == 3
    for position, entries in ((1, first), (2, second)):
        row: Any = TOY.next_log_probs([1, 40, 50][:position])
        actual = [1, 40, 50][position]
        top = int(np.argmax(row))
        assert set(entries) == {actual, top}
        assert entries[actual].logprob == row[actual] and entries[actual].rank == int((row >= row[actual]).sum())
        assert entries[top].rank == 1 and entries[actual].decoded_token == fake_vllm.VOCAB[actual]


SCORED = """
import sys

import pytest


@pytest.mark.perf
def test_accuracy(engine_factory, lm_eval_scorer):
    engine = engine_factory("vllm", model="org/toy-model")
    lm_eval_scorer(engine, ["llmperf_arc"], limit=5)
    assert len(sys.modules["vllm"].LLM.instances) == 1  # scoring built no LLM of its own
"""


def test_lm_eval_scorer_on_the_vllm_engine_records_and_passes_a_baseline(pytester: pytest.Pytester) -> None:
    # In a subprocess (as the llama.cpp accuracy tests): lm-eval's datasets brings pyarrow, importable once.
    pytester.makepyfile(fake_vllm=Path(fake_vllm.__file__).read_text(encoding="utf-8"), test_scored=SCORED)
    pytester.makeconftest("import sys\nimport fake_vllm\n\nsys.modules.update(fake_vllm.modules())\n")
    args = ("-m", "perf", "-p", "no:cacheprovider", "-p", "no:randomly")
    pytester.runpytest_subprocess(*args, "--update-baselines").assert_outcomes(passed=1)
    stored = json.loads((pytester.path / "baselines/test_scored/test_accuracy.json").read_text())
    expected = arc_expected(5)
    for name in ("llmperf_arc.acc", "llmperf_arc.acc_norm"):
        assert stored["metrics"][name]["value"] == pytest.approx(expected[name])
    assert stored["fingerprint"]["backend"] == "vllm"
    assert stored["fingerprint"]["accuracy"]["tasks"]["llmperf_arc"]["source"] == "pytest-llmperf"
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)  # greedy scoring repeats exactly
