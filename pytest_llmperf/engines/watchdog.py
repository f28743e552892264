"""The watchdog between pytest and a launched server: ``python -m pytest_llmperf.engines.watchdog FD -- COMMAND...``.

A server command may be a wrapper (``sh -c ...``) or a launcher that forks workers, and a worker may leave the
server's process group (``setsid``). Signals to the server, its group, or ``PR_SET_PDEATHSIG`` on it then miss
part of the tree, and that part outlives a pytest that was killed. The watchdog closes that gap:

- it makes itself a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so every descendant of the server
  that loses its parent is re-parented to the watchdog instead of to init, and stays findable;
- it starts the server, writes the server's pid to file descriptor FD (then closes it), and waits;
- when pytest goes away (its end of the watchdog's stdin closes: exit, crash or SIGKILL) or tells it to stop
  (SIGTERM; pytest also sets ``PR_SET_PDEATHSIG`` = SIGTERM on the watchdog), it stops every descendant:
  SIGTERM, then SIGKILL after the grace period;
- when the server ends on its own, it kills what is left of the tree and ends the same way the server did
  (the same exit code, or the same signal), so pytest can say how the server ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from pytest_llmperf.core.processes import tree_pids

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Seconds between SIGTERM and SIGKILL when stopping the tree.
GRACE_S = float(os.environ.get("LLMPERF_STOP_GRACE_S", "10"))


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _descendants() -> list[int]:
    """The pids of every live descendant of this process (orphans re-parented to it included)."""
    return tree_pids(include_root=False)


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _reap() -> None:
    """Collect the exit status of re-parented orphans, so none lingers as a zombie."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] != 0:
            pass


class Watchdog:
    def __init__(self, server: subprocess.Popen[bytes]) -> None:
        self.server = server
        self._lock = threading.RLock()  # a signal may arrive while the main thread stops the tree
        self.stopping = False

    def stop_tree(self, grace_s: float = GRACE_S) -> None:
        """SIGTERM to every descendant, SIGKILL to those still alive after ``grace_s``."""
        with self._lock:
            self.stopping = True
            _signal_all(_descendants(), signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while _descendants() and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.server.wait(timeout=0.05)
                _reap()
            while pids := _descendants():
                _signal_all(pids, signal.SIGKILL)
                time.sleep(0.02)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.server.wait(timeout=0.05)
                _reap()

    def watch_parent(self) -> None:
        """Stop the tree when pytest's end of our stdin closes (pytest exited or was killed)."""
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        self.stop_tree()
        os._exit(0)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m pytest_llmperf.engines.watchdog FD -- COMMAND...\n")
        return 2
    report_fd, command = int(argv[0]), argv[2:]
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    try:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as error:
        os.write(report_fd, f"error {error.strerror or error}: {command[0]}\n".encode())
        return 127
    os.write(report_fd, f"{server.pid}\n".encode())
    os.close(report_fd)
    watchdog = Watchdog(server)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        watchdog.stop_tree()
        os._exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    threading.Thread(target=watchdog.watch_parent, name="llmperf-watchdog-parent", daemon=True).start()
    code = server.wait()
    if not watchdog.stopping:
        # The server ended on its own: what it left behind goes at once.
        watchdog.stop_tree(grace_s=0.0)
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
