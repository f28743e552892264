"""Run a workload on an engine: warmup, repetitions of unique requests, metrics per repetition."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_llmperf.core import progress
from pytest_llmperf.core.metrics import GIB, MIN_SAMPLES_FOR_P99, compute_metrics
from pytest_llmperf.core.workload import Request, RequestRecord, Workload
from pytest_llmperf.engines import Engine
from pytest_llmperf.measure.host_memory import HostMemorySampler
from pytest_llmperf.measure.quality import QualitySampler

#: Decides, from the samples so far and the machine's speed during each repetition, whether the measurement is
#: sure enough to stop (``core.stopping``).
StopRule = Callable[[Mapping[str, list[float]], Sequence[float | None]], bool]



@dataclass(repr=False)
class PerfResult:
    """What one measurement produced. Every metric is the median over repetitions.

    Metrics are read as attributes by their baseline names (``result.completion_tok_s``,
    ``result.e2e_p99``) or from ``result.metrics``; ``result.samples`` has one value per repetition.
    A metric that could not be measured is None, never 0.
    """

    metrics: dict[str, float | None]
    samples: dict[str, list[float]]
    workload: Workload
    engine: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    #: ``measure.quality`` figures of each repetition (the machine's state while it ran).
    quality: list[dict[str, float | None]] = field(default_factory=list)
    #: Why measuring stopped: "sure", "max_repetitions", "max_seconds" or "fixed".
    stopped: str = "fixed"
    #: Tokens the engine generated, warm-up requests included, as counted (``RequestRecord.output_tokens``).
    generated_tokens: int = 0

    #: Metrics shown by ``repr`` (an assert on a result prints it): the headline numbers, not the samples.
    _SHOWN = ("completion_tok_s", "total_tok_s", "ttft_p50", "tpot_p50", "e2e_p99", "rss_peak_gib", "mem_max_gib")

    def __repr__(self) -> str:
        from pytest_llmperf.core.metrics import format_value

        shown = [f"{name}={format_value(self.metrics[name])}" for name in self._SHOWN if name in self.metrics]
        workload = self.workload
        return (
            f"PerfResult({', '.join(shown)}; {self.engine.get('backend', '?')} engine, "
            f"{workload.requests} requests x {workload.n_prompt}+{workload.n_predict} tokens)"
        )

    def __getattr__(self, name: str) -> float | None:
        metrics = self.__dict__.get("metrics")
        if metrics is not None and name in metrics:
            return metrics[name]  # type: ignore[no-any-return]
        raise AttributeError(f"PerfResult has no metric {name!r}; measured: {', '.join(sorted(metrics or ()))}")


def build_requests(engine: Engine, workload: Workload, repetition: int, prompts: list[str]) -> list[Request]:
    requests = []
    for index in range(workload.requests):
        # Distinct seeds for warmup (repetition -1) and every measured request keep every prompt unique.
        seed = workload.seed * 1_000_003 + (repetition + 1) * 10_007 + index
        if prompts:
            prompt = engine.tag_prompt(prompts[(repetition * workload.requests + index) % len(prompts)], seed)
        else:
            prompt = engine.make_prompt(seed, workload.n_prompt)
        requests.append(Request(prompt=prompt, max_tokens=workload.n_predict))
    return requests


def run_workload(
    engine: Engine, workload: Workload, rss_base_bytes: int = 0, stop: StopRule | None = None
) -> PerfResult:
    """Measure ``workload`` on ``engine``: warmup requests, then at least ``workload.repetitions`` measured rounds;
    with ``stop``, more rounds until ``stop(samples)`` says the numbers are sure or the workload's budget
    (``max_repetitions``, ``max_seconds``) is spent. Without ``stop`` exactly ``repetitions`` rounds.

    ``rss_peak_gib`` is the process's peak resident memory during a repetition minus ``rss_base_bytes``
    (the engine factory passes the process's RSS from just before it built the engine, so the metric is
    the engine's footprint: weights, KV cache and buffers, not what earlier tests imported). For an engine
    with ``host_memory_pids()`` (a launched server) it is the peak RSS of those processes and their
    children; when that returns None (an attached server, maybe on another machine) it is unavailable.
    """
    prompts = workload.load_prompts()
    pids_of = getattr(engine, "host_memory_pids", None)
    memory_pids: list[int] | None = pids_of() if pids_of is not None else None
    rss_measurable = pids_of is None or memory_pids is not None
    warmed: list[RequestRecord] = []
    if workload.warmup:
        warmup = build_requests(engine, workload, -1, prompts)[: workload.warmup]
        warmed = engine.run(warmup, concurrency=workload.concurrency, request_rate=workload.request_rate,
                            seed=workload.seed)
    per_repetition: list[dict[str, float | None]] = []
    quality: list[dict[str, float | None]] = []
    all_records: list[RequestRecord] = []
    threads = engine.describe().get("engine_config", {}).get("n_threads")
    started, stopped = time.perf_counter(), "fixed"
    most = workload.most_repetitions if stop is not None else workload.repetitions
    for repetition in range(most):
        requests = build_requests(engine, workload, repetition, prompts)
        with QualitySampler(pids=memory_pids, threads=threads) as sampler, \
                HostMemorySampler(pids=memory_pids) as memory:
            records = engine.run(
                requests, concurrency=workload.concurrency, request_rate=workload.request_rate, seed=workload.seed
            )
        metrics = compute_metrics(records)
        base = rss_base_bytes if memory_pids is None else 0
        # No process read (a server whose processes are gone), or a peak below the RSS before the engine was
        # built (memory freed since): nothing to attribute to the engine, so unavailable, never 0.
        footprint = memory.peak_bytes - base if rss_measurable and memory.peak_bytes is not None else None
        metrics["rss_peak_gib"] = footprint / GIB if footprint is not None and footprint > 0 else None
        per_repetition.append(metrics)
        quality.append(sampler.figures)
        all_records.extend(records)
        progress.report(f"repetition {repetition + 1}" + (f" (at most {most})" if stop is not None else f"/{most}"),
                        force=True)
        if stop is None or repetition + 1 < workload.repetitions:
            continue
        if stop(_samples(per_repetition), [figures.get("machine_speed") for figures in quality]):
            stopped = "sure"
            break
        if time.perf_counter() - started >= workload.max_seconds:
            stopped = "max_seconds"
            break
    else:
        if stop is not None and most > workload.repetitions:
            stopped = "max_repetitions"

    samples = _samples(per_repetition)
    headline = {name: statistics.median(values) if values else None for name, values in samples.items()}
    # The engine's own allocations (llama.cpp's buffers): exact, one number for the whole measurement.
    engine_memory = getattr(engine, "engine_memory", None)
    if engine_memory is not None:
        headline.update(engine_memory())
    warnings = [*getattr(engine, "warnings", []), *_token_warnings(all_records, workload, bool(prompts))]
    if workload.requests < MIN_SAMPLES_FOR_P99:
        warnings.append(
            f"p99 rests on {workload.requests} requests per repetition (fewer than {MIN_SAMPLES_FOR_P99}): "
            "it is close to the maximum"
        )
    generated = sum(record.output_tokens for record in [*warmed, *all_records])
    return PerfResult(headline, samples, workload, engine.describe(), warnings, quality, stopped, generated)


def _samples(per_repetition: list[dict[str, float | None]]) -> dict[str, list[float]]:
    return {
        name: [value for rep in per_repetition if (value := rep[name]) is not None] for name in per_repetition[0]
    }


def _token_warnings(records: list[RequestRecord], workload: Workload, from_file: bool) -> list[str]:
    """Warnings when requests did not have the workload's shape: EOS not suppressed, prompts off length."""
    warnings = []
    short = [record.output_tokens for record in records if record.output_tokens < workload.n_predict]
    if short:
        warnings.append(
            f"{len(short)} of {len(records)} requests generated fewer than n_predict={workload.n_predict} tokens "
            f"(as few as {min(short)}): the engine stopped early (EOS not suppressed?), so the workload is lighter"
        )
    lengths = {record.prompt_tokens for record in records if record.prompt_tokens is not None}
    if not from_file and lengths and lengths != {workload.n_prompt}:
        warnings.append(
            f"prompts had {min(lengths)}-{max(lengths)} tokens instead of n_prompt={workload.n_prompt} "
            "(the server's tokenizer could not be matched exactly); metrics use the real counts"
        )
    if records and all(record.prompt_tokens is None for record in records):
        warnings.append("prompt token counts are unavailable (no usage, no tokenize route): prompt_tok_s and "
                        "total_tok_s are not reported")
    return warnings
