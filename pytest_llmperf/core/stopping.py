"""Measure until sure: when a measurement has enough repetitions to stop.

A gated metric is sure when

- its baseline has samples: the interval of current vs baseline (``verdict.judge``) lies wholly on one side of
  the tolerance (within it, or beyond it), so more repetitions would not change the verdict;
- there is no baseline (recording, or a new metric): the order-statistic interval of its median
  (``intervals.median_interval``, 95%) is narrower than ``RECORD_PRECISION`` of the tolerance on each side, so the
  recorded value is good to a fraction of what the gate allows.

The runner asks after every repetition from ``Workload.repetitions`` on and stops at the first "sure", or when
the workload's budget (``max_repetitions``, ``max_seconds``) is spent.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence

from pytest_llmperf.core.baseline import Baseline
from pytest_llmperf.core.intervals import median_interval
from pytest_llmperf.core.tolerance import Tolerance
from pytest_llmperf.core.verdict import Verdict, judge, speed_power

#: Without a baseline, a median is sure when its 95% interval reaches no further than this share of the
#: tolerance from it, on either side.
RECORD_PRECISION = 0.5


def adjusted(name: str, samples: Sequence[float], speeds: Sequence[float]) -> list[float]:
    """``samples`` adjusted for the machine speed each ran at (relative to their median speed), as the verdict
    compares them (``verdict.same_machine``); as they are when they do not scale with the machine."""
    power = speed_power(name)
    if power is None or not speeds or len(speeds) != len(samples):
        return list(samples)
    middle = statistics.median(speeds)
    return [value / (speed / middle) ** power for value, speed in zip(samples, speeds, strict=True)]


def precise(samples: Sequence[float], tolerance: Tolerance) -> bool:
    """Whether the median of ``samples`` is known to ``RECORD_PRECISION`` of ``tolerance``."""
    if tolerance.kind == "stderr":
        return True
    interval = median_interval(samples)
    if interval is None:
        return False
    allowed = tolerance.amount * RECORD_PRECISION
    if tolerance.kind == "relative":
        allowed *= abs(interval.estimate)
    return interval.estimate - interval.low <= allowed and interval.high - interval.estimate <= allowed


def metric_is_sure(
    name: str, samples: Sequence[float], tolerance: Tolerance, baseline: Baseline | None,
    speeds: Sequence[float] = (),
) -> bool:
    """Whether more repetitions could still change this metric's verdict (``speeds``: the machine's speed during
    each sample, for an engine that computes on this CPU)."""
    record = baseline.metrics.get(name) if baseline is not None else None
    if not samples:
        return True  # unavailable: more repetitions will not measure it
    if record is None or not record.samples:
        return precise(adjusted(name, samples, speeds), tolerance)
    comparison = judge(name, record, statistics.median(samples), tolerance, samples, current_speeds=speeds)
    return comparison.sure and comparison.verdict is not Verdict.NOT_JUDGED


def stop_rule(
    gated: Sequence[str], tolerances: Mapping[str, Tolerance], baseline: Baseline | None, prefix: str | None = None,
    cpu_bound: bool = False,
) -> Callable[[Mapping[str, list[float]], Sequence[float | None]], bool]:
    """The rule for one measuring call: ``gated`` are its metric names as measured (unprefixed), looked up in
    ``baseline`` and ``tolerances`` under ``prefix.``. It is asked with the samples so far and the machine's
    speed during each repetition (used when ``cpu_bound``)."""

    def sure(samples: Mapping[str, list[float]], machine: Sequence[float | None] = ()) -> bool:
        known = [float(speed) for speed in machine if speed is not None]
        for name in gated:
            stored = f"{prefix}.{name}" if prefix else name
            values = samples.get(name)
            if values is None:
                continue
            speeds = known if cpu_bound and len(known) == len(machine) == len(values) else []
            if not metric_is_sure(stored, values, tolerances[stored], baseline, speeds):
                return False
        return True

    return sure
