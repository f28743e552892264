"""Server processes launched by the ``openai`` backend: start, wait until healthy, stop, never orphan.

A server is started by a small watchdog process (``pytest_llmperf.engines.watchdog``) in its own session (process
group). Its stdout and stderr go to a log file, never to a pipe: an inference server logs a lot, and a full
pipe blocks it. Orphans are prevented four ways:

- the fixture teardown (and any failure while starting) stops it: SIGTERM to the watchdog, which stops every
  descendant of the server (SIGTERM, then SIGKILL after a grace period), then SIGKILL to the group;
- ``atexit`` and a SIGTERM handler (installed while a server runs, chained to the previous handler) stop every
  live server when pytest exits or is told to terminate;
- if pytest dies where no Python code runs (SIGKILL), the watchdog sees its stdin close (and on Linux gets
  SIGTERM through ``PR_SET_PDEATHSIG``) and stops the tree;
- the watchdog is a child subreaper, so a wrapper's or launcher's children that leave the group (``setsid``)
  or lose their parent stay in its tree and are stopped with it.

Secrets never leave: every text this module shows (commands, log excerpts) passes through ``redact``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_llmperf.errors import EngineError

#: How long a stopping server gets between SIGTERM and SIGKILL.
STOP_GRACE_S = 10.0
#: Lines of the server log quoted in an error that found no error line in it.
LOG_TAIL_LINES = 15
#: A log line that says what went wrong: argparse's ``prog: error: ...``, a Python exception, ``ERROR``.
_ERROR_LINE = re.compile(r"(: error: |^\w*(Error|Exception)\b.*:|\bERROR\b)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the kernel sends SIGTERM to the watchdog when the process that started it dies; the watchdog
    then stops the server's whole tree."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Redactor:
    """Replaces each secret in a text by ``***``."""

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.secrets = [secret for secret in secrets if secret]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


_live: set[ServerProcess] = set()
_live_lock = threading.Lock()
_previous_sigterm: Any = None
_handlers_installed = False


def _stop_all_live() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        server.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Stop every live server, then do what SIGTERM would have done without us."""
    _stop_all_live()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_handlers() -> None:
    global _handlers_installed, _previous_sigterm
    if _handlers_installed:
        return
    atexit.register(_stop_all_live)
    if threading.current_thread() is threading.main_thread():
        _previous_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    _handlers_installed = True


def _log_dir() -> Path:
    directory = Path(tempfile.gettempdir()) / f"pytest-llmperf-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class ServerProcess:
    """One launched server: its process group, log file and base URL."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        name: str,
        base_url: str,
        health_path: str,
        env: Mapping[str, str] | None = None,
        redact: Redactor | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.name = name
        self.base_url = base_url
        self.health_path = health_path
        self.redact = redact or Redactor()
        self._headers = dict(headers or {})
        handle, log_name = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=_log_dir())
        self.log_path = Path(log_name)
        #: The log is removed when the server stops, unless an error pointed the user to it.
        self.keep_log = False
        _install_handlers()
        report_read, report_write = os.pipe()
        try:
            with os.fdopen(handle, "wb") as log:
                # The watchdog (pytest_llmperf.engines.watchdog) starts the command and stops its whole tree when
                # pytest stops it or goes away; our end of its stdin is the sign that pytest is alive.
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "pytest_llmperf.engines.watchdog", str(report_write), "--", *self.command],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                    pass_fds=(report_write,),
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
        except OSError as error:
            os.close(report_read)
            raise EngineError(
                f"cannot start server {name}: {self.redact(' '.join(self.command))}: {error.strerror or error}"
            ) from None
        finally:
            os.close(report_write)
        with os.fdopen(report_read, "rb") as report:
            started = report.readline().decode(errors="replace").strip()
        if not started.isdigit():
            self.process.wait()
            self._forget_log()
            problem = started.removeprefix("error ") or "the watchdog ended before it started the server"
            raise EngineError(f"cannot start server {name}: {self.redact(' '.join(self.command))}: {problem}")
        self.server_pid = int(started)
        with _live_lock:
            _live.add(self)

    @property
    def pid(self) -> int:
        """The server's own process (the watchdog's child): its memory, and its children's, is the server's."""
        return self.server_pid

    def describe_exit(self) -> str | None:
        """``"exited with code N"`` / ``"was killed by SIGKILL"`` once the process has ended, else None."""
        code = self.process.poll()
        if code is None:
            return None
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return self.redact(tail) or "(the log is empty)"

    def log_errors(self) -> list[str]:
        """Lines of the log that say what went wrong (argparse's ``prog: error: ...``, a Python exception)."""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []
        found = [line.strip() for line in lines if _ERROR_LINE.search(line)]
        return [self.redact(line) for line in dict.fromkeys(found)][-3:]

    def failure(self, what: str) -> EngineError:
        """An error naming the server, what happened, the log's error lines first, and the end of its log."""
        self.keep_log = True
        errors = self.log_errors()
        said = "".join(f"\n  {line}" for line in errors)
        tail = "" if errors else f", last lines:\n{self.log_tail()}"
        return EngineError(
            f"server {self.name} at {self.base_url} (pid {self.pid}) {what}"
            + (f"\nthe server said:{said}" if said else "")
            + f"\ncommand: {self.redact(' '.join(self.command))}\nlog: {self.log_path}{tail}"
        )

    def wait_healthy(self, timeout_s: float) -> None:
        """Poll ``health_path`` until it answers 200; raises (and stops the server) on timeout or exit."""
        url = self.base_url + self.health_path
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            exited = self.describe_exit()
            if exited is not None:
                raise self._stopped(self.failure(f"{exited} before it became healthy ({url})"))
            try:
                request = urllib.request.Request(url, headers=self._headers)
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as error:
                if error.code in (401, 403):  # up and refusing: waiting longer will not help
                    what = f"refused the health check {url} with HTTP {error.code} (API key?)"
                    raise self._stopped(self.failure(what)) from None
                last = f"HTTP {error.code}"
            except (urllib.error.URLError, OSError) as error:
                last = str(getattr(error, "reason", error))
            if time.monotonic() > deadline:
                raise self._stopped(self.failure(
                    f"did not become healthy within {timeout_s:g} s (config key 'startup_timeout_s'); "
                    f"GET {url}: {last}"
                ))
            time.sleep(0.2)

    def _stopped(self, error: EngineError) -> EngineError:
        """``error``, once the server is stopped (its log, which the error names, is kept)."""
        self.stop()
        return error

    def stop(self) -> None:
        """Stop the server and everything in its process group; reap it. Safe to call twice."""
        with _live_lock:
            _live.discard(self)
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_GRACE_S + 5)  # the watchdog's own grace, and a margin
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        # Children that ignored SIGTERM (or outlived a server that crashed) go too.
        self._signal_group(signal.SIGKILL)
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        if self.keep_log:
            self._redact_log()
        else:
            self._forget_log()

    def _redact_log(self) -> None:
        """Rewrite the kept log without secrets (a server may echo its settings, API key included)."""
        if not self.redact.secrets:
            return
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            if any(secret in text for secret in self.redact.secrets):
                self.log_path.write_text(self.redact(text), encoding="utf-8")

    def _forget_log(self) -> None:
        self.log_path.unlink(missing_ok=True)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)
