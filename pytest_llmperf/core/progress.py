"""Where a long measurement is ("point 2/3 · repetition 4 (at most 40)"), shown on the terminal while it runs.

The measuring code calls ``report(text)`` at its own pace (between repetitions, every lm-eval request); nothing
is shown unless the plugin installed a sink, which it does only for a terminal (a tty, not ``-q``, not an xdist
worker). ``StatusLine`` keeps one status at the end of the current terminal line and erases it again, so the
test's own line reads as it would have without it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

_sink: Callable[[str], None] | None = None
_clear: Callable[[], None] | None = None
_context = ""
_shown_at = 0.0
#: At most this many updates a second reach the terminal (lm-eval reports every request).
RATE = 10.0


def install(sink: Callable[[str], None] | None, clear: Callable[[], None] | None = None) -> None:
    """Send progress to ``sink`` (None: nowhere); ``clear`` erases what it showed (``done``)."""
    global _sink, _clear
    _sink, _clear = sink, clear


def done() -> None:
    """The current test is over: erase its progress and forget its context."""
    set_context("")
    if _clear is not None:
        _clear()


def set_context(text: str) -> None:
    """What comes before every report of the current test (``"point 2/3 "``), or ``""``."""
    global _context
    _context = text


def report(text: str, *, force: bool = False) -> None:
    """Show ``text`` as the current progress (rate-limited unless ``force``)."""
    global _shown_at
    if _sink is None:
        return
    now = time.monotonic()
    if not force and now - _shown_at < 1.0 / RATE:
        return
    _shown_at = now
    _sink(f"{_context}{text}")


def active() -> bool:
    return _sink is not None


def install_on_terminal(reporter: Any, capture: Any, *, quiet: bool) -> None:
    """Show progress on pytest's terminal (``reporter``: its TerminalReporter, ``capture``: its CaptureManager),
    unless ``quiet`` or the terminal is not a tty. The text goes beside pytest's own writer, which never sees it
    (its idea of the current line stays right), with capture suspended for the write."""
    if reporter is None or capture is None or quiet or not getattr(reporter, "isatty", False):
        install(None)
        return

    def write(text: str) -> None:
        with capture.global_and_fixture_disabled():
            sys.stdout.write(text)
            sys.stdout.flush()

    line = StatusLine(write)
    install(line.show, line.clear)


class StatusLine:
    """One status text kept at the end of the terminal's current line: each ``show`` replaces the previous one
    (backspaces, spaces, backspaces), ``clear`` erases it. ``write`` writes raw text to the terminal."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self._write = write
        self._shown = 0

    def show(self, text: str) -> None:
        text = f" [{text}]"
        self._write(self._erasure() + text)
        self._shown = len(text)

    def clear(self) -> None:
        if self._shown:
            self._write(self._erasure())
            self._shown = 0

    def _erasure(self) -> str:
        n = self._shown
        return "\b" * n + " " * n + "\b" * n if n else ""
