"""The ``openai`` backend against a real ``llama_cpp.server`` on 127.0.0.1 and a scripted server for faults."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pytest_llmperf.core.workload import Request, Workload
from pytest_llmperf.engines.openai import OpenAIEngine
from pytest_llmperf.errors import EngineError
from pytest_llmperf.measure.runner import run_workload

SCRIPTED = str(Path(__file__).with_name("scripted_server.py"))


def scripted(mode: str, **config: Any) -> OpenAIEngine:
    """An engine on the scripted server in ``mode``, launched from a command template."""
    return OpenAIEngine(launch=[sys.executable, SCRIPTED, "{port}", mode], startup_timeout_s=20, **config)


def gone(pid: int, within_s: float = 15.0) -> bool:
    """True once no process ``pid`` exists (zombies count as existing)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                time.sleep(0.1)
                continue
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIEngine]:
    engine = OpenAIEngine(launch="llama_cpp_server", model="q4_k_m", server_args=["--n_ctx", "1024"])
    yield engine
    engine.close()


def test_token_counts_match_the_servers_usage(server: OpenAIEngine) -> None:
    prompts = [server.make_prompt(seed, 48) for seed in (1, 2, 3)]
    records = server.run([Request(prompt, 16) for prompt in prompts], concurrency=3)
    # llama_cpp.server sends no usage while streaming: the plugin counts chunks and asks the tokenize route.
    assert server.describe()["token_counts"] == {"output_tokens": "chunks", "prompt_tokens": "tokenize"}
    for prompt, record in zip(prompts, records, strict=True):
        body = {"prompt": prompt, "max_tokens": 16, "min_tokens": 16, "temperature": 0}
        request = urllib.request.Request(
            server.base_url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            usage = json.loads(response.read())["usage"]
        assert (record.prompt_tokens, record.output_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert record.prompt_tokens == 48
        assert len(record.chunk_times) == 16
        assert record.ttft is not None and 0 < record.ttft < record.e2e


def test_chat_endpoint_streams_from_the_chat_route_and_counts_only_what_it_can() -> None:
    engine = OpenAIEngine(launch="llama_cpp_server", model="q4_k_m", server_args=["--n_ctx", "1024"], endpoint="chat")
    try:
        workload = Workload(n_prompt=32, n_predict=12, requests=3, repetitions=1, warmup=0, concurrency=1)
        result = run_workload(engine, workload)
    finally:
        engine.close()
    # Every generated token arrived as its own chunk of delta.content (min_tokens held EOS off).
    assert result.metrics["completion_tok_s"] is not None and result.metrics["completion_tok_s"] > 0
    assert result.metrics["ttft_p99"] is not None and result.metrics["tpot_p50"] is not None
    # llama_cpp.server sends no usage in a stream, and the chat template's tokens are the server's: the prompt
    # count is unavailable, not the tokenize route's count of the bare message.
    assert result.engine["token_counts"] == {"output_tokens": "chunks", "prompt_tokens": "unavailable"}
    assert result.metrics["prompt_tok_s"] is None and result.metrics["total_tok_s"] is None
    assert result.engine["endpoint"] == "chat"


def test_workload_under_concurrency_measures_every_metric(server: OpenAIEngine) -> None:
    workload = Workload(n_prompt=32, n_predict=8, requests=6, repetitions=1, warmup=1, concurrency=3)
    result = run_workload(server, workload)
    for name in ("total_tok_s", "prompt_tok_s", "completion_tok_s", "req_s", "e2e_p99", "ttft_p99", "tpot_p50",
                 "itl_p50", "rss_peak_gib"):
        assert result.metrics[name] is not None and result.metrics[name] > 0, name  # type: ignore[operator]
    # The server's RSS (the model is in it), not pytest's.
    server_rss = psutil.Process(server._server.pid).memory_info().rss / 1024**3  # type: ignore[union-attr]
    assert result.metrics["rss_peak_gib"] == pytest.approx(server_rss, rel=0.5)
    assert not [w for w in result.warnings if "fewer than n_predict" in w or "instead of n_prompt" in w]
    assert result.engine["server"]["launch"] == "llama_cpp_server"
    assert result.engine["model_path"].endswith("q4_k_m.gguf")


def test_poisson_arrivals_are_seeded_and_paced(server: OpenAIEngine) -> None:
    requests = [Request(server.make_prompt(seed, 8), 2) for seed in range(6)]
    records = server.run(requests, concurrency=6, request_rate=4.0, seed=7)
    sends = [record.t_send - records[0].t_send for record in records]
    import random

    rng = random.Random(7)
    expected, clock = [], 0.0
    for _ in requests:
        expected.append(clock)
        clock += rng.expovariate(4.0)
    # Each request leaves at its scheduled arrival (concurrency never holds one back here).
    assert sends == pytest.approx(expected, abs=0.05)


def test_server_killed_mid_run_gives_a_clear_error_and_leaves_no_process() -> None:
    engine = OpenAIEngine(launch="llama_cpp_server", model="q4_k_m")
    assert engine._server is not None
    pid = engine._server.pid
    requests = [Request(engine.make_prompt(seed, 16), 64) for seed in range(40)]
    killer = threading.Timer(1.0, os.kill, (pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(EngineError) as failure:
            engine.run(requests, concurrency=2)
    finally:
        killer.cancel()
        engine.close()
    message = str(failure.value)
    assert "server llama_cpp_server" in message and f"pid {pid}" in message
    assert "was killed by SIGKILL during the run" in message
    assert "log:" in message
    assert gone(pid)
    assert not [p for p in psutil.process_iter(["cmdline"]) if engine.base_url.rsplit(":", 1)[1] in
                " ".join(p.info["cmdline"] or []) and "llama_cpp.server" in " ".join(p.info["cmdline"] or [])]


def test_server_that_never_becomes_healthy_is_stopped_and_named() -> None:
    with pytest.raises(EngineError) as failure:
        OpenAIEngine(launch=[sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"],
                     startup_timeout_s=1.5)
    message = str(failure.value)
    assert "did not become healthy within 1.5 s" in message and "startup_timeout_s" in message
    assert "loading" in message  # the log's last lines
    pid = int(message.split("(pid ", 1)[1].split(")", 1)[0])
    assert gone(pid)


def test_server_that_exits_while_starting_says_so_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(EngineError, match=r"exited with code 3 before it became healthy[\s\S]*no such model"):
        OpenAIEngine(launch=[sys.executable, "-c", "import sys; print('no such model'); sys.exit(3)"],
                     startup_timeout_s=60)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("http500", "HTTP 500: .*scripted failure"),
        ("not-json", "malformed stream: an event is not a completion chunk: b'{this is not json'"),
        ("no-end", "malformed stream: it ended without a finish_reason"),
        ("error-event", "the server sent an error in the stream: scripted engine crash"),
        ("slow", "timed out after 1 s \\(config key 'request_timeout_s'\\)"),
        ("not-sse", "the server did not stream \\(Content-Type application/json"),
    ],
)
def test_request_faults_are_clear_errors(mode: str, expected: str) -> None:
    engine = scripted(mode, request_timeout_s=1)
    try:
        with pytest.raises(EngineError, match=f"server python.* failed a request: request 0 .*{expected}"):
            engine.run([Request("a b c", 4)])
    finally:
        engine.close()


def test_attach_by_url_uses_usage_when_the_server_sends_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIPTED_LOG", str(tmp_path / "bodies.jsonl"))
    launched = scripted("ok")
    try:
        engine = OpenAIEngine(base_url=launched.base_url + "/v1/", sampling={"top_p": 0.5})
        records = engine.run([Request("one two three", 5)])
        assert (records[0].prompt_tokens, records[0].output_tokens, records[0].counted_by) == (3, 5, "usage")
        description = engine.describe()
        assert description["server"] == {"base_url": launched.base_url, "model": "scripted"}
        assert description["token_counts"] == {"output_tokens": "usage", "prompt_tokens": "usage"}
        assert engine.host_memory_pids() is None  # an attached server's memory is not measurable here
        body = json.loads((tmp_path / "bodies.jsonl").read_text().splitlines()[-1])
        # EOS suppressed both ways on an unknown server; unique prompt as given; sampling passed through.
        assert body["min_tokens"] == 5 and body["ignore_eos"] is True and body["top_p"] == 0.5
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    finally:
        launched.close()


def test_an_attached_servers_health_route_may_answer_an_empty_body() -> None:
    """vLLM's ``/health`` answers 200 with no body: healthy, not an undecodable answer retried until the start-up
    timeout ends in an EngineError."""
    launched = scripted("ok")
    try:
        engine = OpenAIEngine(base_url=launched.base_url, health_path="/health", startup_timeout_s=2)
        assert engine.describe()["server"]["model"] == "scripted"
    finally:
        launched.close()


def test_attached_server_memory_is_unavailable_not_zero(tmp_path: Path) -> None:
    launched = scripted("ok")
    try:
        engine = OpenAIEngine(base_url=launched.base_url)
        result = run_workload(engine, Workload(n_prompt=4, n_predict=3, requests=2, repetitions=1, warmup=0))
        assert result.metrics["rss_peak_gib"] is None
        assert result.metrics["completion_tok_s"] is not None
    finally:
        launched.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"launch": "llama_cpp_server", "temprature": 0}, "unknown openai engine knob 'temprature'"),
        ({}, "exactly one of base_url"),
        ({"base_url": "http://x", "launch": "vllm"}, "exactly one of base_url"),
        ({"base_url": "localhost:8000"}, "base_url must be an http"),
        ({"launch": "llama-cpp"}, "neither a preset"),
        ({"launch": "vllm"}, "needs a model"),
        ({"base_url": "http://127.0.0.1:1", "api_key_env": "LLMPERF_NO_SUCH_KEY"}, "'LLMPERF_NO_SUCH_KEY'"),
        ({"launch": "llama_cpp_server", "model": "/nonexistent.gguf"}, "model file not found: /nonexistent.gguf"),
    ],
)
def test_bad_config_is_named(config: dict[str, Any], message: str) -> None:
    with pytest.raises(EngineError, match=message.replace("(", "\\(")):
        OpenAIEngine(**config)


def test_a_bad_knob_read_after_the_launch_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_llmperf.engines import openai

    real, launched = openai.launch_server, []

    def launch_server(*args: Any, **kwargs: Any) -> Any:
        launched.append(real(*args, **kwargs))
        return launched[-1]

    monkeypatch.setattr(openai, "launch_server", launch_server)
    with pytest.raises(EngineError, match="eos='never' is not one of"):
        scripted("ok", eos="never")
    assert len(launched) == 1 and gone(launched[0].server.pid)  # stopped at once, not at exit


def test_api_key_reaches_the_server_but_no_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIPTED_KEY", "sk-scripted-secret-4411")
    monkeypatch.setenv("MY_KEY", "sk-scripted-secret-4411")
    engine = scripted("auth", api_key_env="MY_KEY")
    try:
        assert engine.run([Request("a b", 2)])[0].output_tokens == 2
        assert "sk-scripted" not in json.dumps(engine.describe())
    finally:
        engine.close()
    monkeypatch.setenv("MY_KEY", "sk-wrong-key-9")
    with pytest.raises(EngineError) as failure:
        scripted("auth", api_key_env="MY_KEY").run([Request("a b", 2)])
    assert "HTTP 401" in str(failure.value) and "sk-wrong" not in str(failure.value)
    # Attached with a wrong key: refused at once, not after waiting out the startup timeout.
    launched = scripted("auth", api_key_env="SCRIPTED_KEY")
    try:
        started = time.monotonic()
        with pytest.raises(EngineError, match=r"HTTP 401.*check the API key: api_key_env='MY_KEY'"):
            OpenAIEngine(base_url=launched.base_url, api_key_env="MY_KEY", startup_timeout_s=60)
        assert time.monotonic() - started < 10
    finally:
        launched.close()
    # A key is never put on a command line (argv is visible to every user in `ps`): {api_key} is refused.
    with pytest.raises(EngineError) as failure:
        OpenAIEngine(launch=[sys.executable, "-c", "import sys; print(sys.argv); sys.exit(1)", "--key={api_key}"],
                     api_key_env="MY_KEY")
    assert "sk-wrong" not in str(failure.value) and "api_key_server_env" in str(failure.value)


def test_fidelity_through_a_server_uses_its_echoed_top_logprobs(server: OpenAIEngine) -> None:
    from pytest_llmperf.measure.fidelity import compare_to_reference, make_reference

    prompts = ["The capital of France is Paris.", "One two three four"]
    rows = [server.fidelity_logprobs(prompt, 5)[0] for prompt in prompts]
    assert all(len(per_prompt) >= 4 for per_prompt in rows)
    assert all(len(row.listed) >= 5 for per_prompt in rows for row in per_prompt)
    reference = make_reference(prompts, rows, 5, "text")
    again = compare_to_reference(reference, [server.fidelity_logprobs(p, 5)[0] for p in prompts], "text")
    # Not exactly 0: the second request reuses the server's cached prompt prefix, which moves the numbers a bit.
    assert again.kl_max < 1e-5 and again.top1_agree == 1.0
    # llama_cpp.server computes prompt log-probabilities only with logits_all (its default); without: named error.
    engine = OpenAIEngine(launch="llama_cpp_server", model="q4_k_m", server_args=["--logits_all", "False"])
    try:
        with pytest.raises(EngineError, match=r"returned no prompt log-probabilities.*--logits_all"):
            engine.fidelity_logprobs("one two three", 4)
    finally:
        engine.close()
