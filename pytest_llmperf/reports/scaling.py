"""The scaling table of ``llmperf.scaling``: throughput, speedup and efficiency per concurrency."""

from __future__ import annotations

from pytest_llmperf.core.metrics import format_value
from pytest_llmperf.measure.scaling import ScalingResult
from pytest_llmperf.reports.table import align

HEADER = ("concurrency", "req/s", "tok/s", "speedup", "efficiency", "ttft p99 s", "e2e p99 s")


def scaling_cells(result: ScalingResult) -> list[tuple[str, ...]]:
    """The table's rows as text cells (columns as ``HEADER``)."""
    return [
        (
            str(int(row["concurrency"] or 0)),
            format_value(row["req_s"]),
            format_value(row["completion_tok_s"]),
            f"{row['speedup']:.2f}x" if row["speedup"] is not None else "-",
            f"{row['efficiency']:.0%}" if row["efficiency"] is not None else "-",
            format_value(row["ttft_p99"]),
            format_value(row["e2e_p99"]),
        )
        for row in result.rows
    ]


def render_scaling(result: ScalingResult) -> list[str]:
    """The table as aligned text lines, the way the llama.cpp parallel-workers study tabulates it."""
    lines = align([HEADER, *scaling_cells(result)], numeric=set(range(len(HEADER))))
    return [f"{result.test}:", *("  " + line for line in lines)]
