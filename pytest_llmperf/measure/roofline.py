"""How close decode comes to the memory-bandwidth limit.

Generating a token reads every weight once (the token-embedding table only one row, unless the output layer is
tied to it), so one sequence decodes at most ``bandwidth / bytes_read_per_token`` tokens per second, and N
sequences decoded together share one read: ``N x bandwidth / (weights + N x kv_read)``. ``tg_roofline_pct`` is the
measured tg over that bound.

The bandwidth is measured, not looked up: a STREAM-like *scale* kernel (``a = s x b`` over arrays far larger than
any cache, numpy's multiply releasing the GIL) on as many threads as the engine decodes with, best of several
trials as STREAM reports it, counting two arrays moved per element (read b, write a). Assumptions (docs/capacity.md):
weights stream from DRAM every token; a model small enough to stay in the CPU's caches can beat this bound (more
than 100%), which says the model is cache-resident, not that the measurement is wrong.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pytest_llmperf.errors import LlmperfError

_measured: dict[tuple[int, int], float] = {}
_lock = threading.Lock()


def memory_bandwidth(threads: int = 1, size_mib: int = 256, trials: int = 5) -> float:
    """Bytes per second a ``threads``-thread scale kernel moves (best of ``trials``), cached per process."""
    import numpy as np

    if threads < 1 or size_mib < 1 or trials < 1:
        raise LlmperfError("memory_bandwidth: threads, size_mib and trials must be >= 1")
    key = (threads, size_mib)
    with _lock:
        if key in _measured:
            return _measured[key]
        n = size_mib * 1024**2 // 8
        source = np.ones(n)
        target = np.empty(n)
        bounds = [(n * i // threads, n * (i + 1) // threads) for i in range(threads)]

        def scale(bound: tuple[int, int]) -> None:
            np.multiply(source[bound[0] : bound[1]], 3.0, out=target[bound[0] : bound[1]])

        best = float("inf")
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(scale, bounds))  # touch every page once
            for _ in range(trials):
                start = time.perf_counter()
                list(pool.map(scale, bounds))
                best = min(best, time.perf_counter() - start)
        _measured[key] = 2 * n * 8 / best
        return _measured[key]


def weight_bytes_per_token(path: str | os.PathLike[str]) -> int:
    """Bytes of weights one decoded token reads: every tensor of the GGUF but the token-embedding table (one row of
    it), which is read whole only when no separate ``output.weight`` exists (tied embeddings)."""
    import gguf

    try:
        tensors = {tensor.name: tensor for tensor in gguf.GGUFReader(str(path)).tensors}
    except (OSError, ValueError) as error:
        raise LlmperfError(f"{path}: not a readable GGUF file ({error})") from None
    total = sum(int(tensor.n_bytes) for tensor in tensors.values())
    embedding = tensors.get("token_embd.weight")
    if embedding is not None and "output.weight" in tensors:
        rows = int(embedding.shape[-1]) if len(embedding.shape) > 1 else 1
        total -= int(embedding.n_bytes) - int(embedding.n_bytes) // max(rows, 1)
    return total


@dataclass(frozen=True)
class Roofline:
    """The bound and where a measured tg sits under it."""

    bandwidth_bytes_s: float
    weight_bytes: int
    kv_bytes_per_token: float
    n_seq: int
    tg_tok_s: float | None

    @property
    def bound_tok_s(self) -> float:
        return self.n_seq * self.bandwidth_bytes_s / (self.weight_bytes + self.n_seq * self.kv_bytes_per_token)

    @property
    def percent(self) -> float | None:
        return 100 * self.tg_tok_s / self.bound_tok_s if self.tg_tok_s is not None else None

    def metrics(self) -> dict[str, float | None]:
        return {"tg_roofline_pct": self.percent, "tg_bound_tok_s": self.bound_tok_s,
                "bandwidth_gb_s": self.bandwidth_bytes_s / 1e9}


def roofline(model_path: str | Path, tg_tok_s: float | None, *, threads: int = 1, n_seq: int = 1,
             kv_bytes_per_token: float = 0.0) -> Roofline:
    """The bound for ``model_path`` on this machine's measured bandwidth; ``kv_bytes_per_token``: the KV cache one
    generated token reads (bytes per cached token x the mean context length)."""
    return Roofline(memory_bandwidth(threads), weight_bytes_per_token(model_path), kv_bytes_per_token, n_seq,
                    tg_tok_s)


def describe(metrics: Mapping[str, float | None]) -> str:
    percent, bound = metrics.get("tg_roofline_pct"), metrics.get("tg_bound_tok_s")
    return f"tg at {percent:.0f}% of the bandwidth bound {bound:.0f} t/s" if percent and bound else "no roofline"
