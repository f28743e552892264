"""``PerfCheck``: the object the ``llmperf`` fixture hands a test, without pytest.

Each measuring call runs its measurement (``measure/calls.py``), adds its part to the test's record
(``core/record.py``) and returns its result at once for plain asserts; the plugin judges the record when the test
ends. An ``LlmperfError`` a call raises names what is wrong; the plugin shows it as the test's failure message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pytest_llmperf.measure import calls

if TYPE_CHECKING:
    from pytest_llmperf.core.record import Part, TestRecord
    from pytest_llmperf.core.session import LlmperfSession
    from pytest_llmperf.core.tolerance import ToleranceTable
    from pytest_llmperf.core.workload import Workload
    from pytest_llmperf.engines import Engine
    from pytest_llmperf.engines.cache import EngineCache
    from pytest_llmperf.measure.ab import ABResult
    from pytest_llmperf.measure.bench import BenchResult
    from pytest_llmperf.measure.capacity import CapacityResult
    from pytest_llmperf.measure.fidelity import FidelityResult
    from pytest_llmperf.measure.instructions import InstructionsResult
    from pytest_llmperf.measure.roofline import Roofline
    from pytest_llmperf.measure.runner import PerfResult
    from pytest_llmperf.measure.scaling import ScalingResult


def _ran(gate: Sequence[str] | None, *tests: tuple[str, int]) -> Sequence[str]:
    """``gate`` as given, else the metric of each test that runs (a token count above 0)."""
    return gate if gate is not None else tuple(metric for metric, tokens in tests if tokens)


class PerfCheck:
    """The ``llmperf`` fixture: measuring calls that add to this test's record, judged when the test ends.

    Every call returns its result at once; ``check=False`` measures without gating; ``name=`` prefixes the
    call's metrics (``decode.completion_tok_s``), needed when two calls would measure the same metric.
    """

    def __init__(
        self, record: TestRecord, session: LlmperfSession, engines: EngineCache,
        tolerances: ToleranceTable | None = None,
    ) -> None:
        self._record = record
        self._session = session
        self._engines = engines
        # The test's tolerances (markers included): measure-until-sure stops when the verdict is sure.
        self._judging = calls.Judging(record.test, session.baseline_dir, tolerances) if tolerances else None

    def _add(self, part: Part) -> None:
        self._record.add(part)

    def measure(
        self, engine: Engine, workload: Workload | None = None, *, gate: Sequence[str] | None = None,
        tolerances: Mapping[str, object] | None = None, track_gpu: bool = False, check: bool = True,
        name: str | None = None,
    ) -> PerfResult:
        """Run ``workload`` (default ``Workload()``) on ``engine``; gate ``gate`` (ini ``llmperf_gate``, plus
        ``mem_max_gib``/``mem_mean_gib`` with ``track_gpu``, which samples the GPUs through NVML)."""
        gpu_gate = ("mem_max_gib", "mem_mean_gib") if track_gpu else ()
        result, part = calls.measure(
            engine, workload, gate=gate or (*calls.default_gate(engine, self._session.gate), *gpu_gate),
            rss_base_bytes=self._engines.rss_base_bytes(engine) or 0, tolerances=tolerances,
            track_gpu=track_gpu, check=check, name=name, judging=self._judging,
        )
        self._add(part)
        return result

    def ab(
        self, engine_a: Engine, engine_b: Engine, workload: Workload | None = None, *,
        labels: Sequence[str] = ("A", "B"), gate: Sequence[str] = ("completion_tok_s",),
        precision: float | None = None, tolerances: Mapping[str, object] | None = None, check: bool = True,
    ) -> ABResult:
        """``workload`` on both engines interleaved (A B B A ...) until the ratios B/A of ``gate`` are known to
        ``precision`` (default 2.5%) each side; gates ``<B>_vs_<A>.<metric>`` (docs/noise.md, "A/B")."""
        result, part = calls.ab(
            engine_a, engine_b, workload, gate=gate, labels=labels, precision=precision,
            rss_base=(self._engines.rss_base_bytes(engine_a) or 0, self._engines.rss_base_bytes(engine_b) or 0),
            tolerances=tolerances, check=check,
        )
        self._add(part)
        return result

    def fidelity(
        self, engine: Engine, prompts: Sequence[str | Sequence[str]] | None = None, *, top_k: int = 16,
        reference: Mapping[str, Any] | None = None, gate: Sequence[str] | None = None,
        tolerances: Mapping[str, object] | None = None, check: bool = True, name: str | None = None,
    ) -> FidelityResult:
        """Next-token distributions over ``prompts`` against the reference stored in this test's baseline (or
        ``reference``): ``kl_mean``, ``kl_max``, ``top1_agree``, ``ref_logprob_mean`` (docs/accuracy.md)."""
        result, part = calls.fidelity(
            engine, prompts, self._record.test, self._session.baseline_dir, update=self._session.update,
            top_k=top_k, reference=reference, gate=gate, tolerances=tolerances, check=check, name=name,
        )
        self._add(part)
        return result

    def scaling(
        self, engine: Engine, workload: Workload | None = None, concurrencies: Sequence[int] = (1, 2, 4, 8), *,
        gate: Sequence[str] = ("completion_tok_s", "efficiency"), tolerances: Mapping[str, object] | None = None,
        name: str | None = None,
    ) -> ScalingResult:
        """``workload`` at each concurrency: throughput, speedup and efficiency, gated per level
        (``completion_tok_s@c4``, ``efficiency@c8``) and tabulated at the end of the session."""
        results, part = calls.scaling(
            engine, workload, concurrencies, self._record.test, gate=gate,
            rss_base_bytes=self._engines.rss_base_bytes(engine) or 0, tolerances=tolerances, name=name,
        )
        self._add(part)
        self._record.scaling.append(results)
        return results[-1]

    def bench(
        self, engine: Engine, n_prompt: int = 128, n_gen: int = 64, *, repetitions: int = 5,
        n_batch: int | None = None, n_depth: int = 0, gate: Sequence[str] | None = None,
        tolerances: Mapping[str, object] | None = None, name: str | None = None,
    ) -> BenchResult:
        """pp and tg as llama-bench measures them (``-p n_prompt -n n_gen -r repetitions -d n_depth``) on an
        in-process llama.cpp engine. The result's ``pp_tok_s`` and ``tg_tok_s`` are llama-bench's means of the
        repetitions; the gated metrics are their medians, like every speed metric (docs/capacity.md). The default
        gate is the tests that run (``n_prompt=0``: no pp)."""
        gate = _ran(gate, ("pp_tok_s", n_prompt), ("tg_tok_s", n_gen))
        results, part = calls.bench(engine, n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions,
                                    n_batch=n_batch, gate=gate, tolerances=tolerances, name=name, n_depth=n_depth)
        self._add(part)
        return results[-1]

    def instructions(
        self, engine: Engine, n_prompt: int = 32, n_gen: int = 16, *, n_depth: int = 0, repetitions: int = 1,
        gate: Sequence[str] | None = None, tolerances: Mapping[str, object] | None = None, name: str | None = None,
    ) -> InstructionsResult:
        """Instructions per prompt token and per generated token of llama.cpp's work on an in-process llama.cpp
        engine, counted under valgrind's callgrind (one thread): a speed gate that holds on a noisy machine
        (docs/noise.md). Unavailable with the reason where valgrind is missing or cannot run the build. The default
        gate is the tests that run (``n_prompt=0``: no pp)."""
        gate = _ran(gate, ("pp_instructions_per_token", n_prompt), ("tg_instructions_per_token", n_gen))
        result, part = calls.instructions(engine, n_prompt=n_prompt, n_gen=n_gen, n_depth=n_depth,
                                          repetitions=repetitions, gate=gate, tolerances=tolerances, name=name)
        self._add(part)
        return result

    def parallel(
        self, engine: Engine, n_prompt: int = 128, n_gen: int = 64, n_parallel: Sequence[int] = (1, 2, 4, 8), *,
        repetitions: int = 1, gate: Sequence[str] = ("total_tok_s", "efficiency", "kv_cache_gib_measured"),
        tolerances: Mapping[str, object] | None = None, name: str | None = None,
    ) -> ScalingResult:
        """N sequences decoded together in one llama.cpp context for each N (llama-batched-bench): prompt, gen and
        overall t/s, speedup, efficiency and the KV cache per N, gated per N and tabulated at session end."""
        results, part = calls.parallel(engine, self._record.test, n_prompt=n_prompt, n_gen=n_gen,
                                       n_parallel=n_parallel, repetitions=repetitions, gate=gate,
                                       tolerances=tolerances, name=name)
        self._add(part)
        self._record.scaling.append(results)
        return results[-1]

    def roofline(
        self, engine: Engine, tg_tok_s: float | None, *, n_seq: int = 1, context_tokens: float = 0.0,
        gate: Sequence[str] = ("tg_roofline_pct",), tolerances: Mapping[str, object] | None = None,
        name: str | None = None,
    ) -> Roofline:
        """``tg_tok_s`` as a share of this machine's memory-bandwidth bound for the engine's model:
        ``tg_roofline_pct``, with ``tg_bound_tok_s`` and the measured ``bandwidth_gb_s`` (docs/capacity.md)."""
        result, part = calls.roofline(engine, tg_tok_s, n_seq=n_seq, context_tokens=context_tokens, gate=gate,
                                      tolerances=tolerances, name=name)
        self._add(part)
        return result  # type: ignore[no-any-return]

    def capacity(
        self, engine: Engine, workload: Workload | None = None, *, slo: Mapping[str, float],
        knob: str = "concurrency", probe: Callable[[int], Mapping[str, float | None]] | None = None,
        start: int = 1, limit: int = 64, margin: float = 0.85,
        gate: Sequence[str] = ("max_concurrency", "goodput_req_s"), tolerances: Mapping[str, object] | None = None,
        name: str | None = None, cache_key: str | None = None,
    ) -> CapacityResult:
        """The largest concurrency (or ``knob`` level, measured by ``probe``) meeting ``slo``: exponential then
        binary search, ``margin`` kept (docs/capacity.md). A check run measures the baseline's level and the next
        one (two trials) instead of recalling an answer, and searches below or above when either moved; the
        cache (per model, config, prompts and hardware) only speeds up recording. A custom ``probe`` is cached
        only under ``cache_key`` (change it when the probe changes). Gates ``max_concurrency`` and
        ``goodput_req_s``; the trials are in the test's notes."""
        result, part = calls.capacity(
            engine, workload, slo, update=self._session.update, start=start, limit=limit, margin=margin,
            probe=probe, knob=knob, gate=gate, tolerances=tolerances, name=name, cache_key=cache_key,
            test=self._record.test, baseline_dir=self._session.baseline_dir,
        )
        self._add(part)
        return result  # type: ignore[no-any-return]

    def check(
        self, metrics: Mapping[str, float | None], *, samples: Mapping[str, list[float]] | None = None,
        fingerprint: dict[str, Any] | None = None, workload: dict[str, Any] | None = None,
        tolerances: Mapping[str, object] | None = None, warnings: Sequence[str] = (),
        stderr: Mapping[str, float | None] | None = None, reference: Any = None, engine: Engine | None = None,
        name: str | None = None,
    ) -> None:
        """Gate numbers the test measured itself, with the rest of this test's record. The fingerprint holds
        ``engine``'s description when given (else this machine's versions and hardware), updated with
        ``fingerprint``."""
        part = calls.given(
            metrics, samples=samples, fingerprint_fields=fingerprint, workload=workload, tolerances=tolerances,
            warnings=warnings, stderr=stderr, reference=reference, engine=engine, name=name,
        )
        self._add(part)
