"""Scaling curves: one workload at several concurrencies, with speedup and efficiency.

Throughput is ``completion_tok_s`` (generated tokens per second of wall time). Speedup at concurrency N is
its throughput over the throughput at the lowest concurrency measured (normally 1); efficiency is speedup
divided by N / lowest, so 1.0 means perfect scaling and 1/N means no gain from concurrency at all (a server
that runs one request at a time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.runner import PerfResult

COLUMNS = ("concurrency", "req_s", "completion_tok_s", "speedup", "efficiency", "ttft_p99", "e2e_p99")


def check_concurrencies(concurrencies: Sequence[int]) -> list[int]:
    levels = list(concurrencies)
    if not levels or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in levels):
        raise LlmperfError(f"scaling concurrencies must be positive integers, got {concurrencies!r}")
    if len(set(levels)) != len(levels):
        raise LlmperfError(f"scaling concurrencies must not repeat, got {concurrencies!r}")
    return sorted(levels)


@dataclass
class ScalingResult:
    """Per concurrency: the full ``PerfResult`` and the scaling table's row."""

    test: str
    results: dict[int, PerfResult]
    rows: list[dict[str, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = scaling_rows({level: result.metrics for level, result in self.results.items()})

    def row(self, concurrency: int) -> dict[str, float | None]:
        for row in self.rows:
            if row["concurrency"] == concurrency:
                return row
        raise KeyError(f"concurrency {concurrency} was not measured; measured: {[r['concurrency'] for r in self.rows]}")

    def speedup(self, concurrency: int) -> float | None:
        return self.row(concurrency)["speedup"]

    def efficiency(self, concurrency: int) -> float | None:
        return self.row(concurrency)["efficiency"]

    def metrics(self, names: Sequence[str]) -> dict[str, float | None]:
        """``{"<name>@c<N>": value}`` for every measured concurrency N (``speedup``/``efficiency`` from the
        table, anything else from that concurrency's result)."""
        flat: dict[str, float | None] = {}
        lowest = min(int(row["concurrency"] or 0) for row in self.rows)
        for row in self.rows:
            level = int(row["concurrency"] or 0)
            for name in names:
                if name in ("speedup", "efficiency") and level == lowest:
                    continue  # 1.0 by definition
                value = row.get(name) if name in ("speedup", "efficiency") else self.results[level].metrics.get(name)
                flat[f"{name}@c{level}"] = value
        return flat

    def samples(self, names: Sequence[str]) -> dict[str, list[float]]:
        return {
            f"{name}@c{level}": list(result.samples.get(name, []))
            for level, result in self.results.items()
            for name in names
            if name not in ("speedup", "efficiency")
        }

    def to_json(self) -> dict[str, Any]:
        return {"test": self.test, "rows": self.rows}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScalingResult:
        return cls(str(data["test"]), {}, [dict(row) for row in data["rows"]])


def scaling_rows(metrics_by_level: Mapping[int, Mapping[str, float | None]]) -> list[dict[str, float | None]]:
    """The table's rows, lowest concurrency first."""
    levels = sorted(metrics_by_level)
    base_level = levels[0]
    base = metrics_by_level[base_level].get("completion_tok_s")
    rows = []
    for level in levels:
        metrics = metrics_by_level[level]
        throughput = metrics.get("completion_tok_s")
        speedup = throughput / base if throughput is not None and base else None
        rows.append(
            {
                "concurrency": float(level),
                "req_s": metrics.get("req_s"),
                "completion_tok_s": throughput,
                "speedup": speedup,
                "efficiency": speedup / (level / base_level) if speedup is not None else None,
                "ttft_p99": metrics.get("ttft_p99"),
                "e2e_p99": metrics.get("e2e_p99"),
            }
        )
    return rows
