"""pp and tg as llama-bench measures them, and N parallel sequences as llama-batched-bench does, in-process.

- ``pp_tok_s``: a prompt of ``n_prompt`` tokens in ``n_batch`` chunks, per repetition ``n_prompt / seconds``;
  ``tg_tok_s``: ``n_gen`` single-token decodes without sampling (after ``n_depth`` context tokens, filled
  untimed), ``n_gen / seconds``. Like llama-bench, each test
  has its own context (``n_ctx`` = its tokens), one warm-up run (the whole prompt, a 1-token generation), the
  cache cleared before each repetition outside the timed region, and mean +- sd over the repetitions (what
  llama-bench prints); the gate stores the median and the samples, like every other speed metric.
- Parallel sequences: for each N, a context of ``N x (n_prompt + n_gen)`` cells over N sequences; N prompts in one
  batch, then ``n_gen`` steps of one token per sequence. Per N: prompt, generation and overall t/s
  (``N x n_prompt / t_pp``, ``N x n_gen / t_tg``, all tokens over ``t_pp + t_tg``), speedup of the overall t/s over
  N = 1, efficiency = speedup / N, the KV cache predicted (``core/kv_cache``) and as llama.cpp allocated it, and
  the generation t/s as a share of the memory-bandwidth bound (``measure/roofline``).

Only engines with ``bench_context`` (the ``llama_cpp`` backend) can be measured this way.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_llmperf.core.kv_cache import from_gguf, llama_cpp_cells
from pytest_llmperf.core.metrics import GIB
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.quality import QualitySampler
from pytest_llmperf.measure.roofline import roofline
from pytest_llmperf.measure.scaling import ScalingResult, check_concurrencies


def _bench_engine(engine: Any) -> Any:
    if not hasattr(engine, "bench_context"):
        raise LlmperfError(
            f"llama-bench-style measurements need the llama_cpp backend (in-process); {engine.backend!r} has no "
            "context of its own to decode into"
        )
    return engine


@dataclass(frozen=True)
class BenchResult:
    """Per-repetition t/s of the pp and tg tests (empty when that test was not run)."""

    n_prompt: int
    n_gen: int
    pp: tuple[float, ...]
    tg: tuple[float, ...]
    #: The machine's state over each repetition (``measure/quality.py``), for the busy-machine rule.
    quality: tuple[dict[str, float | None], ...] = ()

    @staticmethod
    def _mean(values: Sequence[float]) -> float | None:
        return statistics.fmean(values) if values else None

    @staticmethod
    def _sd(values: Sequence[float]) -> float | None:
        return statistics.stdev(values) if len(values) > 1 else None

    @property
    def pp_tok_s(self) -> float | None:
        return self._mean(self.pp)

    @property
    def tg_tok_s(self) -> float | None:
        return self._mean(self.tg)

    def sd(self, phase: str) -> float | None:
        """The standard deviation over the repetitions of ``phase`` ("pp" or "tg"), as llama-bench prints it."""
        return self._sd(self.pp if phase == "pp" else self.tg)

    def metrics(self) -> dict[str, float | None]:
        """The gated figures: the median over the repetitions, like every other speed metric (the verdict's
        interval and machine-speed matching work on the samples; ``pp_tok_s``/``tg_tok_s`` stay llama-bench's
        mean, for the side-by-side with it)."""
        return {"pp_tok_s": statistics.median(self.pp) if self.pp else None,
                "tg_tok_s": statistics.median(self.tg) if self.tg else None}

    def samples(self) -> dict[str, list[float]]:
        return {"pp_tok_s": list(self.pp), "tg_tok_s": list(self.tg)}

    def describe(self) -> str:
        def one(name: str, mean: float | None, sd: float | None, n: int) -> str:
            return f"{name}{n} {mean:.2f} +- {sd or 0:.2f} t/s" if mean is not None else f"{name}{n} -"

        pp = one("pp", self.pp_tok_s, self.sd("pp"), self.n_prompt)
        return f"{pp}, {one('tg', self.tg_tok_s, self.sd('tg'), self.n_gen)}"


def check_counts(**counts: int) -> None:
    """Each token or repetition count a non-negative integer, else an error naming it."""
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise LlmperfError(f"{name} must be a non-negative integer, got {value!r}")


def bench(engine: Any, n_prompt: int = 128, n_gen: int = 64, repetitions: int = 5,
          n_batch: int | None = None, n_depth: int = 0) -> BenchResult:
    """llama-bench's ``-p n_prompt -n n_gen -r repetitions -d n_depth`` on ``engine``'s model and config (the
    depth: context tokens in the cache before the generation test, filled outside the timed region)."""
    check_counts(n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions, n_depth=n_depth)
    if repetitions < 1 or n_prompt + n_gen < 1:
        raise LlmperfError("bench needs repetitions >= 1 and n_prompt or n_gen > 0")
    engine = _bench_engine(engine)
    pp: list[float] = []
    tg: list[float] = []
    quality: list[dict[str, float | None]] = []
    threads = engine.engine_config.get("n_threads")
    with contextlib.ExitStack() as stack:
        prompt = stack.enter_context(engine.bench_context(n_prompt, n_batch=n_batch)) if n_prompt else None
        generation = (stack.enter_context(engine.bench_context(n_depth + n_gen, n_batch=n_batch)) if n_gen
                      else None)
        if prompt is not None:
            prompt.prompt(n_prompt)
        if generation is not None:
            generation.generate(1)
        for _ in range(repetitions):
            # One repetition of each test inside one sampler: the machine's state lines up with both samples.
            with QualitySampler(threads=threads) as sampler:
                if prompt is not None:
                    pp.append(n_prompt / prompt.prompt(n_prompt))
                if generation is not None:
                    tg.append(n_gen / generation.generate(n_gen, n_depth))
            quality.append(sampler.figures)
    return BenchResult(n_prompt, n_gen, tuple(pp), tuple(tg), tuple(quality))


PARALLEL_COLUMNS = ("concurrency", "prompt_tok_s", "completion_tok_s", "total_tok_s", "speedup", "efficiency",
                    "kv_cache_gib_predicted", "kv_cache_gib_measured", "tg_roofline_pct")


def parallel(engine: Any, test: str, n_prompt: int = 128, n_gen: int = 64,
             n_parallel: Sequence[int] = (1, 2, 4, 8), repetitions: int = 1) -> ScalingResult:
    """N sequences decoded together for each N (llama-batched-bench ``-npp -ntg -npl``): the scaling table with
    speedup on the overall t/s, the median over ``repetitions`` runs per N."""
    check_counts(n_prompt=n_prompt, n_gen=n_gen, repetitions=repetitions)
    if n_prompt < 1 or n_gen < 1 or repetitions < 1:
        raise LlmperfError("parallel needs n_prompt, n_gen and repetitions >= 1")
    levels = check_concurrencies(n_parallel)
    engine = _bench_engine(engine)
    shape = from_gguf(engine.model_path)
    config = engine.engine_config
    type_k, type_v = str(config.get("type_k") or "f16"), str(config.get("type_v") or config.get("type_k") or "f16")
    threads = int(config.get("n_threads") or 1)
    metrics: dict[int, dict[str, float | None]] = {}
    samples: dict[int, dict[str, list[float]]] = {}
    quality: list[dict[str, float | None]] = []
    for level in levels:
        n_ctx = level * (n_prompt + n_gen)
        with engine.bench_context(n_ctx, level) as context:
            context.batched(min(n_prompt, 16), 1, level)  # warm-up
            runs = []
            for _ in range(repetitions):
                # The machine's state over each run: a busy or drifting host is named, not read as the engine's.
                with QualitySampler(threads=threads) as sampler:
                    runs.append(context.batched(n_prompt, n_gen, level))
                quality.append(sampler.figures)
            report = context.kv_report
        prompt = [level * n_prompt / t_pp for t_pp, _ in runs]
        generation = [level * n_gen / t_tg for _, t_tg in runs]
        total = [level * (n_prompt + n_gen) / (t_pp + t_tg) for t_pp, t_tg in runs]
        metrics[level] = {
            "prompt_tok_s": statistics.median(prompt), "completion_tok_s": statistics.median(generation),
            "total_tok_s": statistics.median(total),
            "kv_cache_gib_predicted": shape.bytes(llama_cpp_cells(n_ctx, level), type_k=type_k, type_v=type_v) / GIB,
            "kv_cache_gib_measured": report.bytes / GIB if report is not None else None,
        }
        # Each generated token reads the weights once per step (shared by the N sequences) and its own sequence's
        # cache, n_prompt + n_gen / 2 tokens on average.
        kv_read = shape.bytes_per_token(type_k, type_v) * (n_prompt + n_gen / 2)
        bound = roofline(engine.model_path, metrics[level]["completion_tok_s"], threads=threads, n_seq=level,
                         kv_bytes_per_token=kv_read)
        metrics[level]["tg_roofline_pct"] = bound.percent
        samples[level] = {"prompt_tok_s": prompt, "completion_tok_s": generation, "total_tok_s": total}
    result = ScalingResult.from_levels(test, metrics, samples, throughput="total_tok_s", columns=PARALLEL_COLUMNS)
    result.quality = quality
    return result
