"""Launched and attached servers (issue 12, items 9-11, 13, 16 and the temp-file clean-up): no credential in any
output, log or argv the plugin controls; no process outlives pytest, however the server forks; a dead server is
named and relaunched; a refused attach fails at once; a bad server argument is quoted, not buried."""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from pytest_llmperf.core.workload import Request
from pytest_llmperf.engines.openai import OpenAIEngine
from pytest_llmperf.engines.server import free_port
from pytest_llmperf.errors import EngineError
from tests.subprocess_pytest import start_pytest, wait_for_file
from tests.test_openai import SCRIPTED, scripted

PASSWORD = "pw-llmperf-93c1-do-not-leak"


def _processes_with(token: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if token in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def _wait_gone(token: str, within_s: float = 20.0) -> list[psutil.Process]:
    deadline = time.monotonic() + within_s
    while (left := _processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


# --- 9. credentials ------------------------------------------------------------------------------------------


def test_credentials_in_base_url_are_sent_and_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIPTED_USER", "alice")
    monkeypatch.setenv("SCRIPTED_PASSWORD", PASSWORD)
    launched = scripted("basic")
    try:
        host_port = launched.base_url.removeprefix("http://")
        attached = OpenAIEngine(base_url=f"http://alice:{PASSWORD}@{host_port}/v1", served_model="scripted")
        records = attached.run([Request("one two", 3)])
        assert records[0].output_tokens == 3  # the server accepted the credentials
        assert attached.base_url == launched.base_url
        assert PASSWORD not in repr(attached.describe())
        wrong = OpenAIEngine(base_url=f"http://alice:{PASSWORD}x@{host_port}", served_model="scripted")
        with pytest.raises(EngineError) as refused:
            wrong.run([Request("one two", 3)])
        assert "HTTP 401" in str(refused.value) and PASSWORD not in str(refused.value)
    finally:
        launched.close()


def test_a_password_in_base_url_leaves_no_trace_in_output_or_junit(pytester: pytest.Pytester) -> None:
    port = free_port()  # nothing listens there
    pytester.makepyfile(
        test_attach=f"""
        def test_attach(engine_factory):
            engine_factory("openai", base_url="http://alice:{PASSWORD}@127.0.0.1:{port}")
        """
    )
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    # 16: refused is an answer: it fails at once (the startup timeout is 120 s), naming the URL.
    assert time.monotonic() - started < 60
    result.stdout.fnmatch_lines([f"*http://127.0.0.1:{port}*connection refused*is a server running at base_url*"])
    junit = (pytester.path / "junit.xml").read_text()
    assert PASSWORD not in result.stdout.str() + result.stderr.str() + junit
    assert "alice" not in junit


def test_api_key_placeholder_is_refused_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-in-argv-would-leak")
    with pytest.raises(EngineError, match=r"\{api_key\}.*argv.*api_key_server_env") as refused:
        OpenAIEngine(launch=[sys.executable, SCRIPTED, "{port}", "ok", "--key", "{api_key}"], api_key_env="MY_KEY")
    assert "sk-in-argv" not in str(refused.value)


def test_api_key_reaches_a_command_template_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCRIPTED_KEY", "sk-env-only-5512")
    monkeypatch.setenv("MY_KEY", "sk-env-only-5512")
    monkeypatch.delenv("SCRIPTED_KEY")  # the server gets it only from api_key_server_env
    engine = scripted("auth", api_key_env="MY_KEY", api_key_server_env="SCRIPTED_KEY")
    try:
        assert engine.run([Request("a b", 2)])[0].output_tokens == 2
        assert engine._server is not None
        for process in [psutil.Process(engine._server.pid), psutil.Process(engine._server.process.pid)]:
            assert "sk-env-only" not in " ".join(process.cmdline())
    finally:
        engine.close()


def test_a_kept_server_log_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-echoed-by-the-server-8812")
    script = "import os, sys; print('settings: api_key=' + os.environ['API_KEY'], flush=True); sys.exit(3)"
    with pytest.raises(EngineError) as failure:
        OpenAIEngine(launch=[sys.executable, "-c", script], api_key_env="MY_KEY", api_key_server_env="API_KEY",
                     startup_timeout_s=20)
    message = str(failure.value)
    assert "exited with code 3" in message and "sk-echoed" not in message
    log = Path(message.split("log: ", 1)[1].split(",", 1)[0].split("\n", 1)[0])
    assert log.exists() and "api_key=***" in log.read_text() and "sk-echoed" not in log.read_text()


# --- 10. no process outlives pytest, however the server forks ----------------------------------------------------

WRAPPED_TEST = """
import os, time, pytest

@pytest.mark.perf
def test_serve(engine_factory):
    # A wrapper whose server leaves the process group (setsid): signals to the group miss it.
    command = ["sh", "-c", "setsid {python} SCRIPTED {port} ok TOKEN & wait"]
    engine = engine_factory("openai", launch=command, startup_timeout_s=30)
    with open(os.environ["READY"], "w") as ready:
        ready.write("up")
    time.sleep(120)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=lambda s: s.name)
def test_a_forking_wrapped_server_dies_with_pytest(tmp_path: Path, signum: signal.Signals) -> None:
    token = f"llmperf-wrapped-{uuid.uuid4().hex[:8]}"
    (tmp_path / "test_wrapped.py").write_text(WRAPPED_TEST.replace("SCRIPTED", SCRIPTED).replace("TOKEN", token))
    ready = tmp_path / "ready"
    runner = start_pytest(tmp_path, "test_wrapped.py", READY=str(ready))
    try:
        wait_for_file(ready, runner, timeout_s=60)
        servers = [p for p in _processes_with(token) if "scripted_server.py" in " ".join(p.cmdline())]
        assert servers, "the wrapped server is not running"
        assert os.getsid(servers[0].pid) != os.getsid(runner.pid)  # it really left pytest's session
        runner.send_signal(signum)
        runner.wait(timeout=60)
        left = _wait_gone(token)
        assert not left, f"outlived pytest after {signum.name}: {[p.cmdline() for p in left]}"
    finally:
        if runner.poll() is None:
            runner.kill()
        for process in _processes_with(token):
            process.kill()


def test_stopping_a_wrapped_server_stops_its_whole_tree() -> None:
    token = f"llmperf-tree-{uuid.uuid4().hex[:8]}"
    engine = OpenAIEngine(
        launch=["sh", "-c", f"setsid {{python}} {SCRIPTED} {{port}} ok {token} & wait"], startup_timeout_s=30
    )
    assert _processes_with(token)
    engine.close()
    assert not _wait_gone(token)


# --- 11. a dead server is named, then relaunched -------------------------------------------------------------------

DEAD_SERVER_TEST = f"""
import os, signal, time, pytest
from pytest_llmperf import Workload

CONFIG = dict(launch=[{sys.executable!r}, {SCRIPTED!r}, "{{port}}", "ok"], startup_timeout_s=30)
WORKLOAD = Workload(n_prompt=4, n_predict=4, requests=2, repetitions=1, warmup=0)

def test_1_kill(engine_factory, llmperf):
    engine = engine_factory("openai", **CONFIG)
    os.kill(engine.host_memory_pids()[0], signal.SIGKILL)
    time.sleep(1)
    llmperf.measure(engine, WORKLOAD, check=False)

def test_2_next(engine_factory, llmperf):
    engine = engine_factory("openai", **CONFIG)
    result = llmperf.measure(engine, WORKLOAD, check=False)
    assert result.completion_tok_s > 0
"""


def test_a_dead_server_is_named_and_relaunched_for_the_next_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_dead=DEAD_SERVER_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "default")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_1_kill*", "*was killed by SIGKILL*"])
    result.stdout.fnmatch_lines(["*server was killed by SIGKILL; launched a new one for this test*"])
    assert "Connection refused" not in result.stdout.str().split("test_2_next")[-1]


# --- 16. a bad server argument is quoted first, once ------------------------------------------------------------


def test_a_bad_server_argument_names_the_argparse_error_first(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_args="""
        def test_args(engine_factory):
            engine_factory("openai", launch="llama_cpp_server", model="q4_k_m", server_args=["--n_ctx", "lots"])
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(["*exited with code 2 before it became healthy*", "*the server said:*",
                                 "*error: argument --n_ctx: invalid*'lots'*"])
    assert output.count("usage:") <= 1 and "During handling" not in output


# --- the session's own temp files ----------------------------------------------------------------------------------


def test_a_cleanly_stopped_server_leaves_no_log() -> None:
    engine = scripted("ok")
    assert engine._server is not None
    log = engine._server.log_path
    assert log.exists()
    engine.close()
    assert not log.exists()
