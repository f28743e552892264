"""Metric names, their directions and units, and how they are computed from request records.

Definitions follow vLLM's serving benchmark: throughput is tokens over the wall time from the first send to
the last completion; TTFT and end-to-end latency are per request; TPOT is ``(e2e - ttft) / (output_tokens - 1)``
over requests with more than one output token; ITL pools every gap between streamed chunks. Latencies are in
seconds, memory in GiB.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pytest_llmperf.core.workload import RequestRecord
from pytest_llmperf.errors import LlmperfError

Direction = Literal["higher", "lower"]
Unit = Literal["tok/s", "req/s", "s", "GiB", "score", "%", "W", "J", "J/token", "x", "nats", "GB/s", "instr/token"]

#: Bytes in a GiB: every memory metric is in GiB.
GIB = 1024**3
PERCENTILES = (50, 90, 95, 99)
LATENCY_FAMILIES = ("e2e", "ttft", "tpot", "itl")
THROUGHPUT_METRICS = ("total_tok_s", "prompt_tok_s", "completion_tok_s", "req_s")
#: Below this many samples a p99 is mostly the maximum: the report warns.
MIN_SAMPLES_FOR_P99 = 100

#: ``<metric>@c<N>``: the metric measured at concurrency N (a scaling curve, ``llmperf.scaling``).
_AT_CONCURRENCY = re.compile(r"^(?P<base>.+)@c(?P<concurrency>[1-9][0-9]*)$")
#: Scaling metrics: throughput at N over throughput at the lowest concurrency, and that divided by N / lowest.
SCALING_METRICS = ("speedup", "efficiency")
_LATENCY_NAME = re.compile(r"^(e2e|ttft|tpot|itl)_(p50|p90|p95|p99|mean)$")
_MEMORY_NAME = re.compile(
    r"^(mem_max_gib|mem_mean_gib|rss_peak_gib|mem_gpu\d+_gib|mem_process_gib|kv_cache_gib_predicted|kv_cache_gib_measured"
    r"|engine_(mem|model|kv|compute|output)_gib)$"
)
#: The engine's own allocations as the engine reports them (llama.cpp's model, KV, compute and output buffers,
#: from its log when the context is made; ``engines/llama_cpp.py``), and their sum: exact, whatever ran earlier
#: in the process. ``engine_mem_gib`` is the sum.
ENGINE_MEMORY_METRICS = ("engine_mem_gib", "engine_model_gib", "engine_kv_gib", "engine_compute_gib",
                         "engine_output_gib")
#: Metrics whose value does not depend on the machine's speed or on what else ran in the process: judged against
#: the baseline entry of any hardware class with the same backend (docs/metrics.md, "Portable metrics"). Speed,
#: latency, host RSS and GPU readings stay per hardware class. Accuracy (``<task>.<metric>``) is portable too.
PORTABLE_METRICS = frozenset({
    "kl_mean", "kl_max", "top1_agree", "ref_logprob_mean",  # logit fidelity: the same logits on any CPU
    "kv_cache_gib_predicted", "kv_cache_gib_measured",  # KV-cache bytes: from the model's shape and n_ctx
    *ENGINE_MEMORY_METRICS,  # the engine's own buffers: from the model, n_ctx and n_batch
    "kv_max_concurrency",  # vLLM's own count of max_model_len requests its KV cache holds
    # Instructions per token under callgrind: the same build, model and config count the same on any machine
    # that runs the build (measure/instructions.py; the build's CPU features are in the fingerprint).
    "pp_instructions_per_token", "tg_instructions_per_token",
})
#: Metrics with a fixed name: name -> (unit, direction). Portable ones are in ``PORTABLE_METRICS``.
_NAMED_METRICS: dict[str, tuple[Unit, Direction]] = {
    # GPU readings from NVML (``gpu.NvmlTracker``).
    "gpu_util_pct": ("%", "higher"),
    "gpu_power_w": ("W", "lower"),
    "gpu_energy_j": ("J", "lower"),
    "gpu_j_per_token": ("J/token", "lower"),
    # Logit fidelity against a stored reference (``fidelity.py``).
    "kl_mean": ("nats", "lower"),
    "kl_max": ("nats", "lower"),
    "top1_agree": ("score", "higher"),
    "ref_logprob_mean": ("nats", "higher"),
    # Capacity (``measure/bench.py``, ``measure/roofline.py``).
    "pp_tok_s": ("tok/s", "higher"),
    "tg_tok_s": ("tok/s", "higher"),
    "tg_roofline_pct": ("%", "higher"),
    "tg_bound_tok_s": ("tok/s", "higher"),
    "bandwidth_gb_s": ("GB/s", "higher"),
    "max_concurrency": ("x", "higher"),
    "goodput_req_s": ("req/s", "higher"),
    # The KV cache as the engine sizes it (vLLM's ``Maximum concurrency for L tokens per request: X`` log line).
    "kv_max_concurrency": ("x", "higher"),
    # Instructions llama.cpp executes per token, counted under callgrind (``measure/instructions.py``).
    "pp_instructions_per_token": ("instr/token", "lower"),
    "tg_instructions_per_token": ("instr/token", "lower"),
}
# lm-eval metrics where lower is better; every other ``task.metric`` is higher-is-better.
_LOWER_IS_BETTER_ACCURACY = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "ter"}


@dataclass(frozen=True)
class MetricSpec:
    """What a metric name means: which way is better and which unit its values (and tolerances) use."""

    name: str
    direction: Direction
    unit: Unit
    #: Judged against a baseline of any hardware class (``PORTABLE_METRICS``, accuracy).
    portable: bool = False


def split_concurrency(name: str) -> tuple[str, int | None]:
    """``"completion_tok_s@c4"`` -> ``("completion_tok_s", 4)``; a plain name -> ``(name, None)``."""
    match = _AT_CONCURRENCY.match(name)
    return (match["base"], int(match["concurrency"])) if match else (name, None)


def split_prefix(name: str) -> tuple[str | None, str]:
    """``"decode.completion_tok_s"`` (a named call's metric) -> ``("decode", "completion_tok_s")``; any other name,
    accuracy's ``<task>.<metric>`` included, -> ``(None, name)``."""
    head, dot, rest = name.partition(".")
    if dot and head and "." not in split_concurrency(rest)[0]:
        try:
            metric_spec(rest)
        except LlmperfError:
            return None, name
        return head, rest
    return None, name


def metric_spec(name: str) -> MetricSpec:
    """Direction and unit of the metric ``name``; raises for a name the plugin does not know."""
    prefix, unprefixed = split_prefix(name)
    if prefix is not None:
        spec = metric_spec(unprefixed)
        return MetricSpec(name, spec.direction, spec.unit, spec.portable)
    base, concurrency = split_concurrency(name)
    if concurrency is not None:
        if "." in base:
            raise LlmperfError(f"unknown metric {name!r}: '@c<N>' applies to speed and memory metrics only")
        spec = metric_spec(base)
        return MetricSpec(name, spec.direction, spec.unit, spec.portable)
    if name in SCALING_METRICS:  # measured per concurrency (``efficiency@c4``); the bare name sets tolerances
        return MetricSpec(name, "higher", "x")
    if name in THROUGHPUT_METRICS:
        return MetricSpec(name, "higher", "req/s" if name == "req_s" else "tok/s")
    if _LATENCY_NAME.match(name) or name == "wall_time_s":
        return MetricSpec(name, "lower", "s")
    if _MEMORY_NAME.match(name):
        return MetricSpec(name, "lower", "GiB", name in PORTABLE_METRICS)
    if name in _NAMED_METRICS:
        unit, direction = _NAMED_METRICS[name]
        return MetricSpec(name, direction, unit, name in PORTABLE_METRICS)
    if "." in name:
        metric = name.rsplit(".", 1)[1].split(",", 1)[0]
        return MetricSpec(name, "lower" if metric in _LOWER_IS_BETTER_ACCURACY else "higher", "score", portable=True)
    close = difflib.get_close_matches(name, all_metric_names(), n=3)
    hint = f" (did you mean {' or '.join(repr(match) for match in close)}?)" if close else ""
    raise LlmperfError(
        f"unknown metric {name!r}{hint}: known metrics are {', '.join(all_metric_names())}, "
        "and '<task>.<metric>' for accuracy"
    )


def is_accuracy(name: str) -> bool:
    """An lm-eval score, ``<task>.<metric>`` (also under a call's ``name.`` prefix); not fidelity's ``top1_agree``."""
    return metric_spec(name).unit == "score" and "." in split_prefix(name)[1]


def invalid_value(name: str, value: float) -> str | None:
    """Why ``value`` cannot be a measurement of ``name`` (not finite, or negative where that is impossible),
    or None when it can. Such a value is never judged and never written to a baseline."""
    if not math.isfinite(value):
        return f"{name} is {value!r}, not a finite number"
    if value < 0 and metric_spec(name).unit not in ("score", "nats"):
        return f"{name} is {value!r}; a {metric_spec(name).unit} value cannot be negative"
    return None


def all_metric_names() -> list[str]:
    """Every speed and memory metric the runner can produce (accuracy names depend on the tasks)."""
    latency = [f"{family}_{stat}" for family in LATENCY_FAMILIES for stat in ("p50", "p90", "p95", "p99", "mean")]
    memory = ["rss_peak_gib", "mem_max_gib", "mem_mean_gib", "mem_process_gib", "kv_cache_gib_predicted",
              "kv_cache_gib_measured", *ENGINE_MEMORY_METRICS]
    return [*THROUGHPUT_METRICS, *latency, "wall_time_s", *memory, *_NAMED_METRICS]


def latency_stats(family: str, samples: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p95/p99/mean of ``samples`` named ``<family>_<stat>``; None for all when there are none."""
    import numpy as np

    names = [f"{family}_p{p}" for p in PERCENTILES] + [f"{family}_mean"]
    if not samples:
        return dict.fromkeys(names, None)
    values = np.asarray(samples, dtype=float)
    stats: dict[str, float | None] = {f"{family}_p{p}": float(np.percentile(values, p)) for p in PERCENTILES}
    stats[f"{family}_mean"] = float(values.mean())
    return stats


def request_tpot(record: RequestRecord) -> float | None:
    """One request's time per output token after the first: ``(e2e - ttft) / (output_tokens - 1)``; None when
    its first token's time is unknown or it produced fewer than two tokens."""
    if record.ttft is None or record.output_tokens <= 1:
        return None
    return (record.e2e - record.ttft) / (record.output_tokens - 1)


def compute_metrics(records: Sequence[RequestRecord]) -> dict[str, float | None]:
    """All throughput and latency metrics of one repetition's completed requests."""
    if not records:
        raise LlmperfError("no request completed, so no metric can be computed")
    start = min(record.t_send for record in records)
    end = max(record.t_done for record in records)
    duration = end - start
    # A prompt token count nobody could tell makes the prompt and total throughput unavailable, not smaller.
    known_prompts = [record.prompt_tokens for record in records if record.prompt_tokens is not None]
    prompt_tokens = sum(known_prompts) if len(known_prompts) == len(records) else None
    output_tokens = sum(record.output_tokens for record in records)
    metrics: dict[str, float | None] = {
        "total_tok_s": (prompt_tokens + output_tokens) / duration if prompt_tokens is not None else None,
        "prompt_tok_s": prompt_tokens / duration if prompt_tokens is not None else None,
        "completion_tok_s": output_tokens / duration,
        "req_s": len(records) / duration,
        "wall_time_s": duration,
    }
    ttft = [record.ttft for record in records if record.ttft is not None]
    tpot = [value for record in records if record.e2e_known and (value := request_tpot(record)) is not None]
    itl = [gap for record in records for gap in record.gaps]
    metrics.update(latency_stats("e2e", [record.e2e for record in records if record.e2e_known]))
    metrics.update(latency_stats("ttft", ttft))
    metrics.update(latency_stats("tpot", tpot))
    metrics.update(latency_stats("itl", itl))
    return metrics


def format_value(value: float | None) -> str:
    """Four significant digits; one decimal from 100 up; scientific for tiny and huge values."""
    if value is None:
        return "-"
    if value != 0 and not 0.01 <= abs(value) < 1e6:
        return f"{value:.3e}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
