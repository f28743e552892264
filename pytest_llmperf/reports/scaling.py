"""The scaling table of ``llmperf.scaling``: throughput, speedup and efficiency per concurrency."""

from __future__ import annotations

from pytest_llmperf.core.metrics import format_value
from pytest_llmperf.measure.scaling import ScalingResult
from pytest_llmperf.reports.table import align

#: Column -> header; any other column is headed by its metric name.
LABELS = {"concurrency": "concurrency", "req_s": "req/s", "completion_tok_s": "tok/s", "speedup": "speedup",
          "efficiency": "efficiency", "ttft_p99": "ttft p99 s", "e2e_p99": "e2e p99 s"}
#: A parallel-sequences table (``llmperf.parallel``) reads like the llama.cpp workers study.
PARALLEL_LABELS = {"concurrency": "sequences", "prompt_tok_s": "prompt t/s", "completion_tok_s": "gen t/s",
                   "total_tok_s": "overall t/s", "speedup": "speedup", "efficiency": "efficiency",
                   "kv_cache_gib_predicted": "KV MiB (model)", "kv_cache_gib_measured": "KV MiB (llama.cpp)",
                   "tg_roofline_pct": "tg roofline %"}
HEADER = tuple(LABELS.values())


def scaling_header(result: ScalingResult) -> tuple[str, ...]:
    labels = PARALLEL_LABELS if result.throughput == "total_tok_s" else LABELS
    return tuple(labels.get(column, column) for column in result.columns)


def _cell(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    if column == "concurrency":
        return str(int(value))
    if column == "speedup":
        return f"{value:.2f}x"
    if column == "efficiency":
        return f"{value:.0%}"
    if column.startswith("kv_cache_gib"):
        return f"{value * 1024:.2f}"
    return format_value(value)


def scaling_cells(result: ScalingResult) -> list[tuple[str, ...]]:
    """The table's rows as text cells (columns as ``scaling_header``)."""
    return [tuple(_cell(column, row.get(column)) for column in result.columns) for row in result.rows]


def render_scaling(result: ScalingResult) -> list[str]:
    """The table as aligned text lines, the way the llama.cpp parallel-workers study tabulates it."""
    header = scaling_header(result)
    lines = align([header, *scaling_cells(result)], numeric=set(range(len(header))))
    return [f"{result.test}:", *("  " + line for line in lines)]
