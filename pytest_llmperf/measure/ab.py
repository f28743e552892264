"""A and B side by side: two engine configurations measured interleaved, judged on their paired ratio.

``llmperf.ab(engine_a, engine_b, workload)`` runs one repetition of ``workload`` on each engine in the order
A B, B A, A B, ... (ABBA: neither side always goes first, so a warming or cooling machine favours neither), and
pairs the two repetitions of each round. Both sides of a pair saw the same machine, so the ratio b/a of a pair
is free of the drift that makes two measurements minutes apart disagree. The estimate is the median of the
pair ratios with its sign-test interval (``core/intervals.paired_interval``, at ``LEVEL``); rounds are added
until every gated metric's interval is narrower than ``precision`` on each side, or the workload's budget
(``max_repetitions`` rounds, ``max_seconds``) is spent.

The call adds one part to the test's record: each side's medians as ``<A>.<metric>`` and ``<B>.<metric>``
(reported, not gated) and the ratios as ``<B>_vs_<A>.<metric>`` (gated against the baseline like any metric,
their per-pair values as samples), so a test can both assert the ratio now and catch it changing later.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pytest_llmperf.core.intervals import Interval, paired_interval
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.verdict import LEVEL
from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import Engine
from pytest_llmperf.errors import LlmperfError
from pytest_llmperf.measure.runner import PerfResult, run_workload

_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
#: Interval half-width, as a fraction of the ratio, at which a gated ratio is sure.
DEFAULT_PRECISION = 0.025


def ratio_name(labels: tuple[str, str], metric: str) -> str:
    """``ON_vs_OFF.completion_tok_s``: the name of B's metric over A's."""
    return f"{labels[1]}_vs_{labels[0]}.{metric}"


def check_labels(labels: Sequence[str]) -> tuple[str, str]:
    if len(labels) != 2 or labels[0] == labels[1] or not all(isinstance(x, str) and _LABEL.match(x) for x in labels):
        raise LlmperfError(
            f"ab labels must be two different names of letters, digits, '_' or '-' (e.g. ('OFF', 'ON')), got "
            f"{tuple(labels)!r}"
        )
    return labels[0], labels[1]


def check_engines(engine_a: Engine, engine_b: Engine, labels: tuple[str, str]) -> None:
    """Refuse one engine object as both sides: its "B over A" would be a run against itself, stored as a
    baseline that compares nothing. (``engine_factory`` hands out one engine per config: the same config twice
    is the same engine.)"""
    if engine_a is engine_b:
        raise LlmperfError(
            f"ab: {labels[0]} and {labels[1]} are the same engine (one object passed twice); give two engines that "
            f"differ in what you compare, e.g. engine_factory('llama_cpp', n_batch=1024) for {labels[1]}"
        )


@dataclass(repr=False)
class ABResult:
    """Both sides' repetitions, paired round by round, and the ratio b/a of every metric."""

    labels: tuple[str, str]
    a: PerfResult
    b: PerfResult
    #: "AB" or "BA" per round: the order the two sides ran in.
    order: list[str] = field(default_factory=list)
    stopped: str = "fixed"

    def pairs(self, metric: str) -> tuple[list[float], list[float]]:
        a, b = self.a.samples.get(metric, []), self.b.samples.get(metric, [])
        if len(a) != len(b):  # a metric unavailable in some rounds cannot be paired
            return [], []
        return a, b

    def ratio(self, metric: str) -> Interval | None:
        """B over A for ``metric``: median of the pair ratios and its interval (None: too few pairs)."""
        metric_spec(metric)
        return paired_interval(*self.pairs(metric), LEVEL)

    def verdict(self, metric: str) -> str:
        """``"ON is 5.2% faster than OFF (ratio 1.052 [1.031, 1.071])"``, or that no difference was shown."""
        interval = self.ratio(metric)
        a, b = self.labels
        if interval is None:
            return f"{metric}: too few pairs for an interval"
        higher = metric_spec(metric).direction == "higher"
        if interval.low > 1 or interval.high < 1:
            up = interval.low > 1
            word = "better" if up == higher else "worse"
            return (f"{metric}: {b} is {abs(interval.estimate - 1) * 100:.1f}% {word} than {a} "
                    f"(ratio {interval})")
        return f"{metric}: no difference shown between {b} and {a} (ratio {interval})"

    def __repr__(self) -> str:
        return f"ABResult({self.labels[0]} vs {self.labels[1]}, {len(self.order)} rounds, stopped: {self.stopped})"


def run_ab(
    engine_a: Engine, engine_b: Engine, workload: Workload, gate: Sequence[str], labels: tuple[str, str],
    precision: float = DEFAULT_PRECISION, rss_base: tuple[int, int] = (0, 0),
) -> ABResult:
    """Measure ``workload`` on both engines in ABBA order until the gated ratios are known to ``precision``."""
    if not 0 < precision < 1:
        raise LlmperfError(f"ab precision must be a fraction between 0 and 1, got {precision!r}")
    check_engines(engine_a, engine_b, labels)
    single = replace(workload, warmup=0, repetitions=1, max_repetitions=1)
    if workload.warmup:
        for engine in (engine_a, engine_b):
            run_workload(engine, replace(workload, repetitions=1, max_repetitions=1))
    rounds: dict[str, list[PerfResult]] = {"a": [], "b": []}
    order: list[str] = []
    engines = {"a": (engine_a, rss_base[0]), "b": (engine_b, rss_base[1])}
    started, stopped = time.perf_counter(), "max_repetitions"
    for index in range(workload.most_repetitions):
        sequence = "ab" if index % 2 == 0 else "ba"
        for side in sequence:
            engine, base = engines[side]
            rounds[side].append(run_workload(engine, replace(single, seed=workload.seed + index), base))
        order.append(sequence.upper())
        if index + 1 < workload.repetitions:
            continue
        result = _merge(labels, rounds, order, workload, stopped)
        if all(_precise(result.ratio(metric), precision) for metric in gate):
            stopped = "sure"
            break
        if time.perf_counter() - started >= workload.max_seconds:
            stopped = "max_seconds"
            break
    return _merge(labels, rounds, order, workload, stopped)


def _precise(interval: Interval | None, precision: float) -> bool:
    if interval is None:
        return False
    return interval.high - interval.estimate <= precision * interval.estimate and \
        interval.estimate - interval.low <= precision * interval.estimate


def _merge(labels: tuple[str, str], rounds: dict[str, list[PerfResult]], order: list[str], workload: Workload,
           stopped: str) -> ABResult:
    sides = []
    for side in ("a", "b"):
        results = rounds[side]
        samples: dict[str, list[float]] = {}
        for result in results:
            for metric, values in result.samples.items():
                samples.setdefault(metric, []).extend(values)
        metrics = {name: statistics.median(values) if values else None for name, values in samples.items()}
        first = results[0]
        sides.append(PerfResult(
            metrics, samples, workload, first.engine, sorted({w for r in results for w in r.warnings}),
            [figures for r in results for figures in r.quality], stopped,
        ))
    return ABResult(labels, sides[0], sides[1], list(order), stopped)


def ab_metrics(result: ABResult) -> tuple[dict[str, float | None], dict[str, list[float]]]:
    """The part's metrics and samples: each side's under its label, the ratios under ``<B>_vs_<A>``."""
    a_label, b_label = result.labels
    metrics: dict[str, float | None] = {}
    samples: dict[str, list[float]] = {}
    for label, side in ((a_label, result.a), (b_label, result.b)):
        metrics.update({f"{label}.{name}": value for name, value in side.metrics.items()})
        samples.update({f"{label}.{name}": list(values) for name, values in side.samples.items()})
    for name in result.a.metrics:
        a, b = result.pairs(name)
        ratios = [y / x for x, y in zip(a, b, strict=True) if x > 0]
        if ratios and len(ratios) == len(a):
            metrics[ratio_name(result.labels, name)] = statistics.median(ratios)
            samples[ratio_name(result.labels, name)] = ratios
    return metrics, samples

