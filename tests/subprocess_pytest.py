"""pytest in a child process, for tests that signal or kill it: start it, wait until its test says it is ready."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start_pytest(directory: Path, test_file: str, **env: str) -> subprocess.Popen[bytes]:
    """``python -m pytest -q test_file`` in ``directory``, not strict (no $CI), with ``env`` added; its output goes
    to ``directory / "pytest.out"`` (for the failure message of a test that waits on it)."""
    environ = {**os.environ, **env}
    environ.pop("CI", None)
    with open(directory / "pytest.out", "wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", test_file],
            cwd=directory, env=environ, stdout=output, stderr=subprocess.STDOUT, preexec_fn=_default_signals,
        )


def _default_signals() -> None:
    """SIGINT, SIGQUIT and SIGHUP as a terminal's pytest has them. A suite started in the background by a
    non-interactive shell (``cmd &``, ``nohup``) ignores them, the child inherits that, and Python then never
    turns SIGINT into KeyboardInterrupt: the SIGINT test waited out its 60 s."""
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def wait_for_file(path: Path, runner: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Wait until ``path`` exists (the test's sign that its server is up); fail if pytest ends first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert runner.poll() is None, "pytest ended before the server started"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)
