"""The measuring calls behind the ``llmperf`` and ``lm_eval_scorer`` fixtures, without pytest.

Each call measures, and returns its result (for plain asserts) together with the ``Part`` it adds to the test's
record (``core/record.py``): every metric it measured, the ones it gates, samples, stderr, fingerprint, workload,
and how to measure again when a regression has to be confirmed. ``name`` prefixes the call's metrics.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_llmperf.core.baseline import baseline_path, hardware_class, load_baseline
from pytest_llmperf.core.fingerprint import engine_identity, environment, fingerprint
from pytest_llmperf.core.outcome import accept_command
from pytest_llmperf.core.paired import SIGNIFICANCE
from pytest_llmperf.core.record import Part, Remeasured, prefixed
from pytest_llmperf.core.tolerance import ToleranceTable
from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import Engine
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.ab import ABResult
from pytest_llmperf.measure.accuracy import AccuracyResult
from pytest_llmperf.measure.bench import BenchResult
from pytest_llmperf.measure.fidelity import FidelityResult
from pytest_llmperf.measure.instructions import InstructionsResult
from pytest_llmperf.measure.instructions import instructions as count_instructions
from pytest_llmperf.measure.runner import PerfResult, StopRule, run_workload
from pytest_llmperf.measure.scaling import ScalingResult

#: Set on a pytest-xdist worker pinned to GPUs (``core.hardware.worker_environment``): workers on different GPUs
#: measure at the same time.
WORKER_GPUS = "LLMPERF_WORKER_GPUS"


def measurement_lock() -> contextlib.AbstractContextManager[object]:
    """Under pytest-xdist, one measurement at a time on this machine.

    Workers measuring at once share the cores (and memory bandwidth): each would see the other's load as a
    slowdown. Other work (building engines, unmeasured tests) still runs in parallel.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return contextlib.nullcontext()
    from pytest_llmperf.core.locks import machine_lock

    return machine_lock(f"measure:{os.environ.get(WORKER_GPUS, 'machine')}")


def _gated(name: str | None, gate: Sequence[str], check: bool) -> tuple[str, ...]:
    return tuple(prefixed(name, dict.fromkeys(gate))) if check else ()


@dataclass(frozen=True)
class Judging:
    """What a measuring call needs to know to measure until sure: the test, its baseline directory and its
    tolerance table (markers and command line included). None: measure ``Workload.repetitions`` exactly."""

    test: str
    baseline_dir: Path
    tolerances: ToleranceTable


def until_sure(
    judging: Judging | None, engine: Engine, gate: Sequence[str], tolerances: Mapping[str, object] | None,
    name: str | None,
) -> StopRule | None:
    """The stop rule of a call gating ``gate``: against this machine's entry of the test's baseline."""
    from pytest_llmperf.core.stopping import stop_rule

    if judging is None or not gate:
        return None
    table = judging.tolerances
    if tolerances:
        table = table.with_layer("measure(tolerances=...)", tolerances)
    baseline = None
    try:
        stored = load_baseline(baseline_path(judging.baseline_dir, judging.test))
        if stored is not None:
            baseline = stored.for_hardware(hardware_class(fingerprint(engine.describe())))
    except LlmperfError:
        pass  # the verdict reports what is wrong with the file
    stored_names = prefixed(name, dict.fromkeys(gate))
    return stop_rule(list(gate), {metric: table.for_metric(metric) for metric in stored_names}, baseline, name,
                     cpu_bound(engine))


def default_gate(engine: Engine, gate: Sequence[str]) -> tuple[str, ...]:
    """The session's gate for ``engine``: as given, except that the built-in default (``DEFAULT_GATE``) keeps
    only the memory metric the engine owns: ``engine_mem_gib`` for an engine that reports its buffers,
    ``rss_peak_gib`` for one with processes of its own (``host_memory_pids``). An in-process engine's share of
    this process's RSS is reported, not gated (docs/metrics.md, "Host memory")."""
    from pytest_llmperf.core.session import DEFAULT_GATE

    if tuple(gate) != DEFAULT_GATE:
        return tuple(gate)
    own_processes = getattr(engine, "host_memory_pids", None) is not None
    engine_memory = getattr(engine, "engine_memory", None)
    # vLLM reports its KV cache only (no engine_mem_gib): its memory is its processes' RSS.
    reports_buffers = engine_memory is not None and engine_memory().get("engine_mem_gib") is not None
    dropped = {name for name, keep in (("rss_peak_gib", own_processes), ("engine_mem_gib", reports_buffers))
               if not keep}
    return tuple(name for name in gate if name not in dropped)


def cpu_bound(engine: Engine) -> bool:
    """Whether ``engine`` computes on this machine's CPU: in-process llama.cpp without GPU layers, or a server
    this session launched on a machine with no GPU. Its samples are then compared at the same machine speed
    (``core/verdict.same_machine``): the host's own drift (2.5x here) is not read as the engine's."""
    described = engine.describe()
    if described.get("backend") == "llama_cpp":
        return not described.get("engine_config", {}).get("n_gpu_layers")
    pids_of = getattr(engine, "host_memory_pids", None)
    return pids_of is not None and pids_of() is not None and not _has_gpu()


def _has_gpu() -> bool:
    """A GPU this process could use: NVML answers, or NVIDIA's device node is there."""
    from pytest_llmperf.core.hardware import load_nvml

    return load_nvml()[0] is not None or Path("/dev/nvidiactl").exists()


def measure(
    engine: Engine,
    workload: Workload | None,
    *,
    gate: Sequence[str],
    rss_base_bytes: int = 0,
    tolerances: Mapping[str, object] | None = None,
    track_gpu: bool = False,
    check: bool = True,
    name: str | None = None,
    judging: Judging | None = None,
) -> tuple[PerfResult, Part]:
    """Run ``workload`` (default ``Workload()``) on ``engine``; with ``track_gpu`` sample the GPUs through NVML.
    With ``judging``, repetitions are added until the gated metrics are sure (``core/stopping.py``)."""
    from pytest_llmperf.measure.gpu import NvmlTracker

    workload = workload or Workload()
    results: list[PerfResult] = []
    stop = until_sure(judging, engine, gate if check else (), tolerances, name)

    def run() -> Remeasured:
        tracker = NvmlTracker() if track_gpu else contextlib.nullcontext()
        with measurement_lock(), tracker:
            results.append(run_workload(engine, workload, rss_base_bytes, stop))
        latest = results[-1]
        if isinstance(tracker, NvmlTracker):
            # The tracker saw the warmup requests too: their tokens count for energy per token, as counted.
            latest.metrics.update(tracker.metrics(latest.generated_tokens))
        return prefixed(name, latest.metrics), prefixed(name, latest.samples), latest.quality, latest.stopped

    metrics, samples, quality, stopped = run()
    result = results[-1]
    part = Part(
        "measure", dict(metrics), _gated(name, gate, check), dict(samples), fingerprint=fingerprint(result.engine),
        workload=workload.to_dict(), warnings=list(result.warnings), tolerances=tolerances, name=name, remeasure=run,
        quality=quality, stopped=stopped, cpu_bound=cpu_bound(engine),
    )
    return result, part


def scaling(
    engine: Engine,
    workload: Workload | None,
    concurrencies: Sequence[int],
    test: str,
    *,
    gate: Sequence[str],
    rss_base_bytes: int = 0,
    tolerances: Mapping[str, object] | None = None,
    name: str | None = None,
) -> tuple[list[ScalingResult], Part]:
    """Run ``workload`` at each concurrency; gate ``<metric>@c<N>`` per level (``completion_tok_s@c4``).

    Returns the results so far (a confirming re-measurement appends the newest) and the part."""
    from pytest_llmperf.measure.scaling import check_concurrencies

    workload = workload or Workload()
    levels = check_concurrencies(concurrencies)
    if workload.requests < levels[-1]:
        raise LlmperfError(
            f"scaling up to concurrency {levels[-1]} needs Workload.requests >= {levels[-1]}, got {workload.requests}"
        )
    latest: list[ScalingResult] = []
    every = ("completion_tok_s", "req_s", "speedup", "efficiency", "ttft_p99", "e2e_p99", "tpot_p50")

    def run() -> Remeasured:
        results = {}
        for level in levels:
            with measurement_lock():
                results[level] = run_workload(engine, replace(workload, concurrency=level), rss_base_bytes)
        latest.append(ScalingResult(test, results))
        names = list(dict.fromkeys((*every, *gate)))
        quality = [figures for result in results.values() for figures in result.quality]
        return prefixed(name, latest[-1].metrics(names)), prefixed(name, latest[-1].samples(names)), quality, "fixed"

    metrics, samples, quality, _ = run()
    gated = prefixed(name, latest[0].metrics(list(gate)))
    warnings = sorted({warning for result in latest[0].results.values() for warning in result.warnings})
    part = Part(
        "scaling", dict(metrics), tuple(gated), dict(samples),
        fingerprint=fingerprint(latest[0].results[levels[0]].engine),
        workload={**workload.to_dict(), "concurrency": levels}, warnings=warnings, tolerances=tolerances, name=name,
        remeasure=run, quality=quality,
    )
    return latest, part


def ab(
    engine_a: Engine,
    engine_b: Engine,
    workload: Workload | None,
    *,
    gate: Sequence[str],
    labels: Sequence[str] = ("A", "B"),
    precision: float | None = None,
    rss_base: tuple[int, int] = (0, 0),
    tolerances: Mapping[str, object] | None = None,
    check: bool = True,
) -> tuple[ABResult, Part]:
    """``workload`` on both engines interleaved (``measure/ab.py``); gates B/A of ``gate``."""
    from pytest_llmperf.core.metrics import metric_spec
    from pytest_llmperf.measure.ab import DEFAULT_PRECISION, ab_metrics, check_labels, ratio_name, run_ab

    pair = check_labels(labels)
    for metric in gate:
        metric_spec(metric)
    workload = workload or Workload()

    def run() -> Remeasured:
        with measurement_lock():
            results.append(run_ab(engine_a, engine_b, workload, gate, pair, precision or DEFAULT_PRECISION,
                                  rss_base))
        latest = results[-1]
        metrics, samples = ab_metrics(latest)
        return metrics, samples, [*latest.a.quality, *latest.b.quality], latest.stopped

    results: list[ABResult] = []
    metrics, samples, quality, stopped = run()
    result = results[-1]
    gated = tuple(ratio_name(pair, metric) for metric in gate if ratio_name(pair, metric) in metrics) if check else ()
    engine_fingerprint = fingerprint(result.a.engine)
    engine_fingerprint["ab"] = {pair[0]: engine_identity(result.a.engine), pair[1]: engine_identity(result.b.engine)}
    part = Part(
        "ab", dict(metrics), gated, dict(samples), fingerprint=engine_fingerprint,
        workload={**workload.to_dict(), "ab": list(pair)}, warnings=sorted({*result.a.warnings, *result.b.warnings}),
        tolerances=tolerances, name=f"ab({pair[0]}, {pair[1]})", remeasure=run, quality=quality, stopped=stopped,
    )
    return result, part


def fidelity(
    engine: Engine,
    prompts: Sequence[str | Sequence[str]] | None,
    test: str,
    baseline_dir: Path,
    *,
    update: bool,
    top_k: int = 16,
    reference: Mapping[str, Any] | None = None,
    gate: Sequence[str] | None = None,
    tolerances: Mapping[str, object] | None = None,
    check: bool = True,
    name: str | None = None,
) -> tuple[FidelityResult, Part]:
    """The engine's next-token distributions over ``prompts`` against a reference: the one stored in this test's
    baseline (recorded by ``--update-baselines``), or ``reference`` (``reference_of(f16_engine, prompts)``)."""
    from pytest_llmperf.measure.fidelity import (
        DEFAULT_PROMPTS,
        FIDELITY_METRICS,
        check_reference,
        compare_to_reference,
        distributions_of,
        make_reference,
        normalise_prompts,
    )

    texts = normalise_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
    if not isinstance(top_k, int) or top_k < 1:
        raise LlmperfError(f"fidelity top_k must be a positive integer, got {top_k!r}")
    unknown = sorted(set(gate or ()) - set(FIDELITY_METRICS))
    if unknown:
        raise LlmperfError(f"fidelity gate names {unknown}; fidelity metrics are {', '.join(FIDELITY_METRICS)}")
    distributions, key_kind = distributions_of(engine, texts, top_k)
    engine_fingerprint = fingerprint(engine.describe())
    path = baseline_path(baseline_dir, test)
    stored_reference = reference is None
    if reference is not None:
        reference = check_reference(dict(reference), "fidelity(reference=...)")
        if reference["prompts"] != texts:
            raise LlmperfError("fidelity(reference=...) was taken on other prompts than this check's")
        engine_fingerprint["fidelity_reference"] = reference.get("source")
    else:
        stored = None if update else load_baseline(path)
        entry = stored.for_hardware(hardware_class(engine_fingerprint)) if stored is not None else None
        kept = entry.reference if entry is not None else None
        if isinstance(kept, dict) and "by_name" in kept:  # several fidelity calls: one reference per call
            kept = kept["by_name"].get(name or "fidelity()")
        if kept is not None:
            reference = check_reference(kept, str(path))
            if reference["prompts"] != texts:
                raise LlmperfError(
                    f"{path}: the fidelity reference was recorded on other prompts; record it again with: "
                    f"{accept_command(test)}"
                )
        elif entry is not None:
            # Comparing the engine with itself would pass whatever it does: say what is missing instead.
            raise LlmperfError(
                f"{path} has no fidelity reference (recorded before fidelity was checked here?); record it "
                f"with: {accept_command(test)}"
            )
        else:
            reference = make_reference(texts, distributions, top_k, key_kind)
    result = compare_to_reference(reference, distributions, key_kind)
    result.reference = reference
    warnings = []
    if result.truncated:
        warnings.append(
            f"{result.truncated} of {result.positions} positions had a reference token outside the engine's "
            f"top-{top_k}: KL is a lower bound there"
        )
    metrics = prefixed(name, result.metrics)
    part = Part(
        "fidelity", metrics, _gated(name, gate or FIDELITY_METRICS, check), fingerprint=engine_fingerprint,
        workload={"fidelity_prompts": len(texts), "top_k": top_k}, warnings=warnings, tolerances=tolerances,
        reference=reference if stored_reference and check else None, name=name,
    )
    return result, part


def accuracy(
    engine: Engine,
    tasks: Sequence[str],
    *,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int | str | None = None,
    seed: int = 1234,
    tolerances: Mapping[str, object] | None = None,
    check: bool = True,
    name: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    significance: float = SIGNIFICANCE,
    **evaluate_kwargs: Any,
) -> tuple[AccuracyResult, Part]:
    """Score lm-eval ``tasks`` on ``engine`` through lm-eval's own evaluator; ``model_args`` go to the engine's
    lm-eval model (server engines: lm-eval's ``--model_args``, e.g. ``num_concurrent``, ``tokenizer``)."""
    from pytest_llmperf.measure.accuracy import evaluate

    make_model = getattr(engine, "lm_eval_model", None)
    if make_model is None:
        raise LlmperfError(f"the {engine.backend!r} engine cannot be scored by lm-eval (no lm-eval model)")
    lm = make_model(**dict(model_args or {}))
    if getattr(engine, "endpoint", None) == "chat":
        evaluate_kwargs.setdefault("apply_chat_template", True)  # lm-eval's chat model takes messages
    scores = evaluate(
        lm, tasks, limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, seed=seed, **evaluate_kwargs,
    )
    metrics = prefixed(name, scores.metrics)
    described = getattr(lm, "llmperf_describe", None)
    if described:
        scores.fingerprint["accuracy"]["lm_eval_model"] = described
    part = Part(
        "lm_eval_scorer", metrics, tuple(metrics) if check else (), stderr=prefixed(name, scores.stderr),
        fingerprint={**fingerprint(engine.describe(), ("lm-eval",)), **scores.fingerprint},
        workload={"tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot, "documents": scores.documents},
        tolerances=tolerances, name=name, documents=prefixed(name, scores.per_document), significance=significance,
    )
    return scores, part


def given(
    metrics: Mapping[str, float | None],
    *,
    samples: Mapping[str, list[float]] | None = None,
    fingerprint_fields: dict[str, Any] | None = None,
    workload: dict[str, Any] | None = None,
    tolerances: Mapping[str, object] | None = None,
    warnings: Sequence[str] = (),
    stderr: Mapping[str, float | None] | None = None,
    reference: Any = None,
    engine: Engine | None = None,
    name: str | None = None,
) -> Part:
    """Numbers the test measured itself (``llmperf.check``), all gated; fingerprinted with ``engine``'s
    description when given, else this machine's versions and hardware, updated with ``fingerprint_fields``."""
    fields = fingerprint_fields or {}
    described = fingerprint(engine.describe()) if engine is not None else environment(fields.get("backend"))
    values = prefixed(name, metrics)
    return Part(
        "check", values, tuple(values), prefixed(name, samples or {}), prefixed(name, stderr or {}),
        fingerprint={**described, **fields}, workload=dict(workload or {}), warnings=list(warnings),
        tolerances=tolerances, reference=reference, name=name,
    )


def bench(
    engine: Engine, *, n_prompt: int, n_gen: int, repetitions: int, n_batch: int | None, gate: Sequence[str],
    tolerances: Mapping[str, object] | None = None, name: str | None = None, n_depth: int = 0,
) -> tuple[list[BenchResult], Part]:
    """llama-bench's pp/tg on ``engine`` (``measure/bench.bench``); ``pp_tok_s``, ``tg_tok_s`` per repetition as
    samples. Returns the results so far (a confirming re-measurement appends) and the part."""
    from pytest_llmperf.measure import bench as bench_module

    latest: list[BenchResult] = []

    def run() -> Remeasured:
        with measurement_lock():
            latest.append(bench_module.bench(engine, n_prompt, n_gen, repetitions, n_batch, n_depth))
        quality = list(latest[-1].quality)
        return prefixed(name, latest[-1].metrics()), prefixed(name, latest[-1].samples()), quality, "fixed"

    metrics, samples, quality, _ = run()
    part = Part(
        "bench", dict(metrics), tuple(prefixed(name, dict.fromkeys(gate))), dict(samples),
        fingerprint=fingerprint(engine.describe()),
        workload={"n_prompt": n_prompt, "n_gen": n_gen, "repetitions": repetitions, "n_batch": n_batch,
                  **({"n_depth": n_depth} if n_depth else {})},
        tolerances=tolerances, name=name, remeasure=run, quality=quality, cpu_bound=cpu_bound(engine),
    )
    return latest, part


def instructions(
    engine: Engine, *, n_prompt: int, n_gen: int, n_depth: int, repetitions: int, gate: Sequence[str],
    tolerances: Mapping[str, object] | None = None, name: str | None = None,
) -> tuple[InstructionsResult, Part]:
    """Instructions per prompt and generated token under callgrind (``measure/instructions.py``). The count does
    not move with the machine: no re-measurement, no machine-speed matching. Unavailable metrics carry the reason;
    what the count depends on beyond the engine (valgrind, the build's CPU features) is in the fingerprint."""
    with measurement_lock():  # not for the count's sake: a neighbour measuring wall-clock speed would feel it
        result = count_instructions(engine, n_prompt, n_gen, n_depth, repetitions)
    metrics = prefixed(name, result.metrics())
    spread = result.spread()
    part = Part(
        "instructions", dict(metrics), tuple(prefixed(name, dict.fromkeys(gate))),
        dict(prefixed(name, result.samples())),
        fingerprint={**fingerprint(engine.describe()), "counted_with": dict(result.counted_with)},
        workload={"n_prompt": n_prompt, "n_gen": n_gen, "n_depth": n_depth, "repetitions": repetitions,
                  "threads": 1},
        warnings=[f"instructions(): {spread}"] if spread else [], tolerances=tolerances, name=name,
        unavailable=dict.fromkeys(metrics, result.unavailable) if result.unavailable else {},
    )
    return result, part


def parallel(
    engine: Engine, test: str, *, n_prompt: int, n_gen: int, n_parallel: Sequence[int], repetitions: int,
    gate: Sequence[str], tolerances: Mapping[str, object] | None = None, name: str | None = None,
) -> tuple[list[ScalingResult], Part]:
    """N parallel sequences in one llama.cpp context (``measure/bench.parallel``), ``<metric>@c<N>`` per N."""
    from pytest_llmperf.measure import bench as bench_module

    latest: list[ScalingResult] = []
    every = ("prompt_tok_s", "completion_tok_s", "total_tok_s", "speedup", "efficiency", "kv_cache_gib_predicted",
             "kv_cache_gib_measured")

    def run() -> Remeasured:
        with measurement_lock():
            latest.append(bench_module.parallel(engine, test, n_prompt, n_gen, n_parallel, repetitions))
        names = list(dict.fromkeys((*every, *gate)))
        quality = list(latest[-1].quality)
        return prefixed(name, latest[-1].metrics(names)), prefixed(name, latest[-1].samples(names)), quality, "fixed"

    metrics, samples, quality, _ = run()
    part = Part(
        "parallel", dict(metrics), tuple(prefixed(name, latest[0].metrics(list(gate)))), dict(samples),
        fingerprint=fingerprint(engine.describe()),
        workload={"n_prompt": n_prompt, "n_gen": n_gen, "n_parallel": list(n_parallel), "repetitions": repetitions},
        tolerances=tolerances, name=name, remeasure=run, quality=quality,
    )
    return latest, part


def roofline(
    engine: Engine, tg_tok_s: float | None, *, n_seq: int, context_tokens: float, gate: Sequence[str],
    tolerances: Mapping[str, object] | None = None, name: str | None = None,
) -> tuple[Any, Part]:
    """``tg_tok_s`` against the memory-bandwidth bound of ``engine``'s model on this machine
    (``measure/roofline``); the cache read per token is ``context_tokens`` cached tokens."""
    from pytest_llmperf.core.kv_cache import from_gguf
    from pytest_llmperf.measure import roofline as roofline_module

    model_path = getattr(engine, "model_path", None)
    if model_path is None:
        raise LlmperfError(f"a roofline needs the engine's GGUF file; the {engine.backend!r} engine has none")
    config = getattr(engine, "engine_config", {})
    type_k = str(config.get("type_k") or "f16")
    kv_read = from_gguf(model_path).bytes_per_token(type_k, str(config.get("type_v") or type_k)) * context_tokens
    with measurement_lock():
        result = roofline_module.roofline(model_path, tg_tok_s, threads=int(config.get("n_threads") or 1),
                                          n_seq=n_seq, kv_bytes_per_token=kv_read)
    metrics = prefixed(name, result.metrics())
    part = Part("roofline", dict(metrics), tuple(prefixed(name, dict.fromkeys(gate))),
                fingerprint=fingerprint(engine.describe()), workload={"n_seq": n_seq, "context_tokens": context_tokens},
                tolerances=tolerances, name=name)
    return result, part


def capacity(
    engine: Engine, workload: Workload | None, slo: Mapping[str, float], *, update: bool, start: int, limit: int,
    margin: float, probe: Any = None, knob: str = "concurrency", gate: Sequence[str],
    tolerances: Mapping[str, object] | None = None, name: str | None = None, cache_key: str | None = None,
    test: str | None = None, baseline_dir: Path | None = None,
) -> tuple[Any, Part]:
    """The largest ``knob`` level meeting ``slo``; ``probe(level) -> metrics`` measures a custom knob.

    A check run (not ``update``) verifies the level this machine's baseline of ``test`` was recorded at
    (``measure/capacity.verify``: that level and the next, two trials when nothing changed) instead of recalling
    an answer: the result is what the server does now. Recording (``update``, or no baseline) verifies the
    cache's last answer the same way, else searches. A custom probe's answer is cached only under the caller's
    ``cache_key`` (the plugin cannot see what a probe measures)."""
    from pytest_llmperf.measure import capacity as capacity_module

    limits = capacity_module.check_slo(slo)
    workload = workload or Workload()
    described = fingerprint(engine.describe())
    settings = {"knob": knob, "slo": limits, "start": start, "limit": limit, "margin": margin,
                "workload": workload.to_dict(), "prompts_sha256": capacity_module.prompts_sha256(workload),
                "probe": None if probe is None else cache_key}
    key = capacity_module.cache_key(described, settings)
    cacheable = probe is None or cache_key is not None
    stored, source = None, None
    if not update and test is not None and baseline_dir is not None:
        stored = capacity_module.baseline_level(baseline_dir, test, hardware_class(described), name, margin, limit)
        source = "baseline"
    if stored is None and cacheable:
        cached = capacity_module.load_cached(key)
        stored, source = (cached.found, "cache") if cached is not None else (None, None)
    if probe is None:
        probing = capacity_module.workload_probe(engine, workload, limits)
    else:
        def probing(level: int) -> Any:
            metrics = dict(probe(level))
            failures = capacity_module.slo_failures(limits, metrics)
            return capacity_module.Trial(level, not failures, "; ".join(failures) or "meets the SLO", metrics)
    from pytest_llmperf.measure.quality import QualitySampler

    pids_of = getattr(engine, "host_memory_pids", None)
    # The machine's state over the trials: a busy machine's smaller capacity is named, not read as the server's.
    with measurement_lock(), QualitySampler(pids=pids_of() if pids_of is not None else None) as sampler:
        if stored is None:
            result = capacity_module.search(probing, knob=knob, start=start, limit=limit, margin=margin)
        else:
            result = capacity_module.verify(probing, stored, knob=knob, start=start, limit=limit, margin=margin,
                                            source=str(source))
    chosen = next((t for t in result.trace if t.level == result.found and t.passed), None)
    result = replace(result, goodput_req_s=chosen.metrics.get("goodput_req_s") if chosen else None)
    if cacheable:
        capacity_module.store_cached(key, result)
    metrics = prefixed(name, result.metrics())
    part = Part(
        "capacity", dict(metrics), tuple(prefixed(name, dict.fromkeys(gate))), fingerprint=described,
        workload={**workload.to_dict(), "capacity": {k: v for k, v in settings.items() if k != "workload"}},
        warnings=[f"capacity: {result.describe()}"], tolerances=tolerances, name=name,
        # The level that passed, beside max_concurrency (margin x it): what the next check run verifies.
        reference={"capacity": {"knob": knob, "found": result.found, "margin": margin}},
        quality=[sampler.figures],
    )
    return result, part
