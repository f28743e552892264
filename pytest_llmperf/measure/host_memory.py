"""Host memory: the peak resident set size of this process, or of a launched server's process tree."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any


class HostMemorySampler:
    """Peak resident set size, sampled on a background thread while a block runs.

    Of this process by default; with ``pids``, of those processes and all their children together (a
    launched server and its workers).
    """

    def __init__(self, interval_s: float = 0.02, pids: list[int] | None = None) -> None:
        self.interval_s = interval_s
        self.pids = pids
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self, psutil: Any) -> int:
        if self.pids is None:
            return int(psutil.Process().memory_info().rss)
        total = 0
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for process in tree:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    continue
        return total

    def _sample(self) -> None:
        import psutil

        while True:
            self.peak_bytes = max(self.peak_bytes, self._rss(psutil))
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
