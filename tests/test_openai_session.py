"""The ``openai`` backend through pytest: no orphan server when the run is interrupted, no API key anywhere."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest

from tests.subprocess_pytest import start_pytest, wait_for_file
from tests.test_openai import gone

INTERRUPTED_TEST = """
import os, time, pytest

@pytest.mark.perf
def test_serve(engine_factory):
    engine = engine_factory("openai", launch="llama_cpp_server", model="q4_k_m")
    with open(os.environ["PID_FILE"] + ".tmp", "w") as out:
        out.write(str(engine.host_memory_pids()[0]))
    os.replace(os.environ["PID_FILE"] + ".tmp", os.environ["PID_FILE"])
    time.sleep(120)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_run_leaves_no_server_process(tmp_path: Path, signum: signal.Signals) -> None:
    (tmp_path / "test_serve.py").write_text(INTERRUPTED_TEST)
    pid_file = tmp_path / "server.pid"
    runner = start_pytest(tmp_path, "test_serve.py", PID_FILE=str(pid_file))
    try:
        wait_for_file(pid_file, runner)
        server_pid = int(pid_file.read_text())
        assert psutil.pid_exists(server_pid)
        runner.send_signal(signum)
        runner.wait(timeout=60)
        assert gone(server_pid), f"server {server_pid} outlived pytest after {signum.name}"
    finally:
        if runner.poll() is None:
            runner.kill()


KEYED_TEST = """
import json, os, urllib.error, urllib.request, pytest
from pytest_llmperf import Workload

@pytest.mark.perf
def test_keyed(engine_factory, llmperf):
    engine = engine_factory("openai", launch="llama_cpp_server", model="q4_k_m", api_key_env="LLMPERF_SECRET")
    # The server really wants the key: without it a request is refused.
    bare = urllib.request.Request(engine.base_url + "/v1/models")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bare, timeout=10)
    assert refused.value.code == 401
    print("engine:", json.dumps(engine.describe()))
    # Gated on throughput alone, with a 100% tolerance (a throughput cannot drop by more): a test of secrets
    # must not fail because the machine is slow.
    result = llmperf.measure(engine, Workload(n_prompt=16, n_predict=4, requests=2, repetitions=1),
                             gate=["completion_tok_s"], tolerances={"completion_tok_s": "100%"})
    print("result:", result.engine)
"""

SECRET = "sk-llmperf-7f3a9c-do-not-leak"


def test_api_key_leaves_no_trace(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMPERF_SECRET", SECRET)
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_keyed=KEYED_TEST)
    args = ["-m", "perf", "-rA", "-s", "--log-level=DEBUG", "--llmperf-baseline-dir", "baselines",
            "--llmperf-report", "report.json"]
    recorded = pytester.runpytest_subprocess(*args, "--update-baselines")
    recorded.assert_outcomes(passed=1)
    # The second run checks against the baseline (reading and comparing it); its numbers are not the point here.
    checked = pytester.runpytest_subprocess(*args)
    checked.assert_outcomes(passed=1)
    written = [path for path in pytester.path.rglob("*") if path.is_file() and path.suffix in (".json", ".md")]
    assert any(path.parent.name == "test_keyed" for path in written)  # the baseline
    assert {"report.json", "report.md"} <= {path.name for path in written}
    for path in written:
        assert SECRET not in path.read_text(), path
    for run in (recorded, checked):
        output = "\n".join(run.outlines + run.errlines)
        assert "engine:" in output
        assert SECRET not in output
    baseline = json.loads(next(p for p in written if p.parent.name == "test_keyed").read_text())
    assert baseline["fingerprint"]["server"]["launch"] == "llama_cpp_server"
