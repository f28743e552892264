"""The engine's own memory, as the engine accounts for it: llama.cpp's buffers, read from its log.

When llama.cpp loads a model and makes a context it logs every buffer it allocates, per device::

    load_tensors:   CPU_Mapped model buffer size =    27.50 MiB
    llama_context:        CPU  output buffer size =     0.12 MiB
    llama_kv_cache:        CPU KV buffer size =    16.00 MiB
    llama_context:        CPU compute buffer size =    56.01 MiB

These are exact (two decimals of MiB) and depend only on the model, ``n_ctx``, ``n_batch``/``n_ubatch``, the KV
types and the build: not on what ran earlier in the process, unlike the process's resident set (docs/metrics.md,
"Host memory"). ``engine_mem_gib`` is their sum; ``engine_model_gib``, ``engine_kv_gib``, ``engine_compute_gib`` and
``engine_output_gib`` each kind's sum over devices. A kind the log does not name is unavailable (None), never 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_llmperf.core.metrics import GIB

_BUFFER_LINE = re.compile(
    r"^\s*(?P<source>\w+):\s+(?P<device>\S+)\s+(?P<kind>model|KV|compute|output) buffer size\s*=\s*"
    r"(?P<mib>[0-9]+(?:\.[0-9]+)?) MiB\s*$",
    re.MULTILINE,
)
#: Metric name of each buffer kind.
KINDS = {"model": "engine_model_gib", "KV": "engine_kv_gib", "compute": "engine_compute_gib",
         "output": "engine_output_gib"}


@dataclass(frozen=True)
class Buffer:
    """One buffer line: who logged it, the device (``CPU``, ``CPU_Mapped``, ``CUDA0``...), its kind and size."""

    source: str
    device: str
    kind: str
    mib: float


def parse_llama_buffers(text: str) -> list[Buffer]:
    """Every ``<device> <kind> buffer size = N MiB`` line of llama.cpp's log, in order."""
    return [Buffer(m["source"], m["device"], m["kind"], float(m["mib"])) for m in _BUFFER_LINE.finditer(text)]


def engine_memory_metrics(buffers: Iterable[Buffer]) -> dict[str, float | None]:
    """``engine_mem_gib`` (the sum) and each kind's sum in GiB; all None when the log named no buffer."""
    totals: dict[str, float] = {}
    for buffer in buffers:
        totals[KINDS[buffer.kind]] = totals.get(KINDS[buffer.kind], 0.0) + buffer.mib * 1024**2
    metrics: dict[str, float | None] = {name: totals[name] / GIB if name in totals else None
                                        for name in KINDS.values()}
    metrics["engine_mem_gib"] = sum(totals.values()) / GIB if totals else None
    return metrics
