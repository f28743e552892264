"""When a measurement was disturbed: the rule on ``measure/quality.py``'s figures, and the words for it.

A repetition is disturbed when the engine's threads waited for a core ``MAX_RUNQUEUE_WAIT`` of the time more
than while the baseline was recorded (a launched server's threads and its client share the cores: they waited
8-9% of the time on a quiet machine here; an in-process engine under 3%; a 2-thread engine beside a neighbour
70-100%), when the hypervisor stole ``MAX_STEAL_PCT`` of the CPU or more, when the other processes of the machine
used ``MAX_EXTRA_OTHERS_CORES`` more cores than while the baseline was recorded, or when the machine itself ran
``MAX_MACHINE_DRIFT`` slower or faster than then (the reference loop of ``measure/quality.py``).

The last two are relative on purpose. On this project's 2-core machine one busy neighbour on the *other* core
slowed a one-thread decode 2.5x without preempting it (the two vCPUs share a physical core): only the
neighbour's own CPU use shows it, and a baseline recorded beside a steady neighbour is judged beside it. And the
host itself drifted 2.5x within a minute with nothing of ours running, which only a reference workload shows.
The thresholds sit between the quiet and loaded distributions that ``benchmarks/noise.py --quality`` prints
(docs/noise.md).
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections.abc import Mapping, Sequence

#: Figures of one repetition, by name; also the keys of the ``quality`` blocks in reports and baselines.
QUALITY_FIGURES = (
    "runqueue_wait", "involuntary_switches_s", "cpu_share", "others_cores", "steal_pct", "machine_speed"
)

MAX_RUNQUEUE_WAIT = 0.15
MAX_STEAL_PCT = 5.0
MAX_EXTRA_OTHERS_CORES = 0.5
#: ... or the reference loop ran this much slower or faster than while the baseline was recorded: the machine
#: is not in the state the baseline saw (a faster machine would hide a regression as surely as a slower one
#: invents one).
MAX_MACHINE_DRIFT = 0.10
#: A measurement is disturbed when this share of its repetitions or more were: the Hodges-Lehmann estimate of
#: the verdicts shrugs off a few (it breaks down at 29% outliers).
MAX_DISTURBED_SHARE = 0.25

Figures = Mapping[str, "float | None"]


def summary(per_repetition: Sequence[Figures]) -> dict[str, float | None]:
    """Each figure's median over the repetitions (None where no repetition had it)."""
    result: dict[str, float | None] = {}
    for name in QUALITY_FIGURES:
        values = [value for rep in per_repetition if (value := rep.get(name)) is not None]
        result[name] = statistics.median(values) if values else None
    return result


def disturbance(figures: Figures, reference: Figures | None = None) -> str | None:
    """Why a repetition (or a summary) was disturbed, or None when it was not. ``reference`` is the quality
    the baseline was recorded with."""
    reasons = []
    wait = figures.get("runqueue_wait")
    if wait is not None and wait - ((reference or {}).get("runqueue_wait") or 0.0) >= MAX_RUNQUEUE_WAIT:
        reasons.append(f"engine threads waited for a core {wait * 100:.0f}% of the time")
    steal = figures.get("steal_pct")
    if steal is not None and steal >= MAX_STEAL_PCT:
        reasons.append(f"{steal:.0f}% steal")
    others = figures.get("others_cores")
    if others is not None:
        before = (reference or {}).get("others_cores") or 0.0
        if others - before >= MAX_EXTRA_OTHERS_CORES:
            since = f", {before:.1f} when the baseline was recorded" if before else ""
            reasons.append(f"other processes used {others:.1f} cores{since}")
    speed, then = figures.get("machine_speed"), (reference or {}).get("machine_speed")
    if speed is not None and then and abs(speed / then - 1) > MAX_MACHINE_DRIFT:
        word = "slower" if speed < then else "faster"
        reasons.append(f"the machine ran {abs(1 - speed / then) * 100:.0f}% {word} than when the baseline was "
                       f"recorded (reference loop {speed:.1f} vs {then:.1f} Msteps/s)")
    return ", ".join(reasons) if reasons else None


#: The largest share of the time an engine's threads can be counted as waiting for a core when working out how
#: much slower that made them: beyond it the slowdown estimate 1 / (1 - wait) stops meaning anything.
MAX_EXPLAINED_WAIT = 0.9


def explained_slowdown(figures: Figures, reference: Figures | None = None, *, machine_adjusted: bool = False) -> float:
    """How many times slower the disturbance in ``figures`` (a repetition, or a summary) could have made an engine,
    against the state the baseline was recorded in: the machine's own slowdown (reference loop; a faster machine
    explains no slowdown: 1) times the run-queue wait's ``1 / (1 - extra wait)`` (threads that waited a share of
    the time for a core progressed only in the rest). With ``machine_adjusted`` the samples were already adjusted
    for the machine's speed, so only the wait counts. Steal and other processes' cores show up in those two;
    without a reference-loop figure (``LLMPERF_MACHINE_SPEED=off``) nothing bounds what they did, so they explain
    any slowdown (``math.inf``).
    """
    factor = 1.0
    speed, then = figures.get("machine_speed"), (reference or {}).get("machine_speed")
    if speed is None and disturbance({k: v for k, v in figures.items() if k in ("others_cores", "steal_pct")},
                                     reference) is not None:
        return math.inf
    if not machine_adjusted and speed and then and speed < then:
        factor *= then / speed
    wait = figures.get("runqueue_wait")
    if wait is not None:
        extra = min(max(wait - ((reference or {}).get("runqueue_wait") or 0.0), 0.0), MAX_EXPLAINED_WAIT)
        factor /= 1 - extra
    return factor


def contended(figures: Figures, reference: Figures | None = None) -> bool:
    """Whether other work competed for the cores: the engine's threads waited, another process used cores, or
    the hypervisor stole CPU, beyond the thresholds (the machine's speed alone is not contention)."""
    reference = reference or {}
    wait, others, steal = figures.get("runqueue_wait"), figures.get("others_cores"), figures.get("steal_pct")
    return ((wait is not None and wait - (reference.get("runqueue_wait") or 0.0) >= MAX_RUNQUEUE_WAIT)
            or (others is not None and others - (reference.get("others_cores") or 0.0) >= MAX_EXTRA_OTHERS_CORES)
            or (steal is not None and steal >= MAX_STEAL_PCT))


#: p90 and beyond rest on the few slowest requests. The share of time the engine waited for a core bounds the
#: mean slowdown, not theirs: a request queued behind a neighbour's time slice is many times slower (TTFT p99
#: 8x with the threads waiting 85% of the time, two busy loops beside a launched server here, where the wait
#: explains 3.4x). Under contention a tail-latency change is explained whatever its size; never without it.
_TAIL = re.compile(r"_(p9[0-9]|max)$")


def tail_metric(name: str) -> bool:
    """``e2e_p99``, ``ttft_p90``, ``decode.itl_p95``...: a percentile in the tail of its distribution."""
    return bool(_TAIL.search(name.split("@", 1)[0]))


def disturbed_share(per_repetition: Sequence[Figures], reference: Figures | None = None) -> float:
    """The share of repetitions that were disturbed (0 when there are none)."""
    if not per_repetition:
        return 0.0
    return sum(disturbance(figures, reference) is not None for figures in per_repetition) / len(per_repetition)


def busy_reason(per_repetition: Sequence[Figures], reference: Figures | None = None) -> str:
    """``machine busy (load 5.8 on 2 cores, other processes used 1.0 cores)``, from the disturbed repetitions."""
    disturbed = [figures for figures in per_repetition if disturbance(figures, reference) is not None]
    detail = disturbance(summary(disturbed or per_repetition), reference) or "disturbed repetitions"
    try:
        load = f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
    except OSError:
        load = ""
    share = f"{len(disturbed)} of {len(per_repetition)} repetitions disturbed"
    return f"machine busy ({load}{detail}; {share})"
