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
    """Per concurrency: the metrics measured there (the full ``PerfResult`` when the runner measured it) and the
    scaling table's rows, with speedup and efficiency on ``throughput``."""

    test: str
    results: dict[int, PerfResult]
    rows: list[dict[str, float | None]] = field(default_factory=list)
    throughput: str = "completion_tok_s"
    columns: tuple[str, ...] = COLUMNS
    level_metrics: dict[int, dict[str, float | None]] = field(default_factory=dict)
    level_samples: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    #: The machine's state over each run, every level in order (``measure/quality.py``), where it was sampled
    #: outside the runner (``measure/bench.parallel``); the runner's results carry their own.
    quality: list[dict[str, float | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.level_metrics and self.results:
            self.level_metrics = {level: dict(result.metrics) for level, result in self.results.items()}
            self.level_samples = {level: dict(result.samples) for level, result in self.results.items()}
        if not self.rows:
            self.rows = scaling_rows(self.level_metrics, self.throughput, self.columns)

    @classmethod
    def from_levels(
        cls, test: str, metrics: Mapping[int, Mapping[str, float | None]],
        samples: Mapping[int, Mapping[str, list[float]]], *, throughput: str, columns: Sequence[str],
    ) -> ScalingResult:
        """A table from per-level metrics measured without the runner (``measure/bench.parallel``)."""
        return cls(test, {}, throughput=throughput, columns=tuple(columns),
                   level_metrics={level: dict(values) for level, values in metrics.items()},
                   level_samples={level: dict(values) for level, values in samples.items()})

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
        table, anything else from that concurrency's metrics)."""
        flat: dict[str, float | None] = {}
        lowest = min(int(row["concurrency"] or 0) for row in self.rows)
        for row in self.rows:
            level = int(row["concurrency"] or 0)
            for name in names:
                if name in ("speedup", "efficiency") and level == lowest:
                    continue  # 1.0 by definition
                value = row.get(name) if name in ("speedup", "efficiency") else self.level_metrics[level].get(name)
                flat[f"{name}@c{level}"] = value
        return flat

    def samples(self, names: Sequence[str]) -> dict[str, list[float]]:
        return {
            f"{name}@c{level}": list(values.get(name, []))
            for level, values in self.level_samples.items()
            for name in names
            if name not in ("speedup", "efficiency")
        }

    def to_json(self) -> dict[str, Any]:
        return {"test": self.test, "rows": self.rows, "throughput": self.throughput, "columns": list(self.columns)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ScalingResult:
        return cls(str(data["test"]), {}, [dict(row) for row in data["rows"]],
                   str(data.get("throughput", "completion_tok_s")), tuple(data.get("columns", COLUMNS)))


def scaling_rows(
    metrics_by_level: Mapping[int, Mapping[str, float | None]], throughput: str = "completion_tok_s",
    columns: Sequence[str] = COLUMNS,
) -> list[dict[str, float | None]]:
    """The table's rows, lowest concurrency first: ``columns`` from each level's metrics, speedup of
    ``throughput`` over the lowest level's, and efficiency = speedup / (N / lowest)."""
    levels = sorted(metrics_by_level)
    base_level = levels[0]
    base = metrics_by_level[base_level].get(throughput)
    rows = []
    for level in levels:
        metrics = metrics_by_level[level]
        value = metrics.get(throughput)
        speedup = value / base if value is not None and base else None
        derived = {"concurrency": float(level), "speedup": speedup,
                   "efficiency": speedup / (level / base_level) if speedup is not None else None}
        rows.append({column: derived[column] if column in derived else metrics.get(column) for column in columns})
    return rows
