"""Silence native libraries' console output (llama.cpp's loader, quantiser and context warnings).

llama.cpp prints past llama-cpp-python's ``verbose=False`` (``n_ctx_seq (2048) > n_ctx_train (256)``, a
quantiser's line per tensor): some from C to file descriptors 1 and 2, some through llama-cpp-python's log
callback to ``sys.stderr`` (which pytest's capture replaces by an object of its own). ``native_output_silenced``
points both, descriptors and Python streams, at a temporary file for the duration of a block; if the block
raises, what was printed is written to the real stderr, so a failure still shows why.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_lock = threading.Lock()


@contextlib.contextmanager
def native_output_silenced() -> Iterator[None]:
    with _lock, tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        text = open(os.dup(sink.fileno()), "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with text, contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        except BaseException:
            _restore(saved)
            sink.seek(0)
            sys.stderr.write(sink.read()[-20_000:].decode(errors="replace"))
            raise
        else:
            _restore(saved)


def _restore(saved: list[int]) -> None:
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for descriptor in saved:
        os.close(descriptor)
    saved.clear()
