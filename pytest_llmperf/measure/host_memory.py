"""Host memory: the peak resident set size of this process, or of a launched server's process tree."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from pytest_llmperf.core.processes import process_tree


class HostMemorySampler:
    """Peak resident set size, sampled on a background thread while a block runs.

    Of this process by default; with ``pids``, of those processes and all their children together (a
    launched server and its workers).
    """

    def __init__(self, interval_s: float = 0.02, pids: list[int] | None = None) -> None:
        self.interval_s = interval_s
        self.pids = pids
        #: None until a sample could read a process (a launched server whose processes are gone: unavailable).
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self, psutil: Any) -> int | None:
        if self.pids is None:
            return int(psutil.Process().memory_info().rss)
        total, read = 0, False
        for pid in self.pids:
            for process in process_tree(pid):
                try:
                    total += process.memory_info().rss
                    read = True
                except psutil.Error:
                    continue
        return total if read else None

    def _sample(self) -> None:
        import psutil

        while True:
            rss = self._rss(psutil)
            if rss is not None:
                self.peak_bytes = rss if self.peak_bytes is None else max(self.peak_bytes, rss)
            if self._stop.wait(self.interval_s):
                break

    def __enter__(self) -> HostMemorySampler:
        self._thread = threading.Thread(target=self._sample, name="llmperf-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
