"""False alarms, detection and "not judged" of the regression rules, on the real llama.cpp engine.

Runs the embedded model (Q4_K_M, the default one thread) as two interleaved streams of repetitions: unchanged,
and slowed by ``--slowdown`` (a logits processor that busy-waits; its delay is calibrated on the machine so that
the measured slowdown is what was asked). Blocks of ``--block`` repetitions alternate, so both streams see the
same machine. With ``--neighbour`` a CPU-burning process runs meanwhile (recording and checking both beside it).

Then, on those samples, each rule judges many comparisons (contiguous segments of the streams, which overlap
between comparisons; seeded):

- pytest-llmperf: the baseline is recorded until sure (``core/stopping.py``: its median known to half the
  tolerance, 5 to 50 repetitions), the current measurement runs until its verdict is sure (5 to 50), the verdict
  is ``verdict.judge`` (repetitions at the baseline's machine speed, adjusted for it; Hodges-Lehmann ratio, Moses
  interval at ``LEVEL``), and a regressed or unsure verdict is measured again (the next segment, after a wait
  when the measurement was disturbed) as ``--llmperf-confirm 1`` does;
- asv's rule (``asv compare``): Mann-Whitney U two-sided p < 0.002 and the median beyond the tolerance factor,
  on ``--k`` repetitions a side;
- the point rule (pytest-benchmark's ``mean:5%``): the mean beyond the tolerance, ``--k`` repetitions a side.

``--quality`` also prints the distributions of the quality figures (``measure/quality.py``) of the unchanged
repetitions, for the thresholds of ``core/disturbance.py``.

    python benchmarks/noise.py
    python benchmarks/noise.py --neighbour
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats

from pytest_llmperf.core.baseline import Baseline, MetricRecord
from pytest_llmperf.core.disturbance import MAX_DISTURBED_SHARE, QUALITY_FIGURES, disturbed_share, summary
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.stopping import adjusted, metric_is_sure, precise
from pytest_llmperf.core.tolerance import Tolerance, parse_tolerance
from pytest_llmperf.core.verdict import Verdict, judge
from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import create_engine
from pytest_llmperf.measure.quality import QualitySampler
from pytest_llmperf.measure.runner import run_workload

METRIC = "completion_tok_s"
WORKLOAD = Workload(n_prompt=64, n_predict=64, requests=2, warmup=0, repetitions=1, max_repetitions=1)
FEWEST, MOST = 5, 50
#: ``--llmperf-busy-wait`` (30 s) at ~0.5 s a repetition, at most: a wait ends as soon as the machine is quiet.
WAIT_REPETITIONS = 20


class BusyWait:
    """A logits processor that burns ``seconds`` of CPU per token: a real, uniform slowdown."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, input_ids: object, scores: object) -> object:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return scores


def neighbour_process() -> subprocess.Popen[bytes]:
    # Bounded: it stops by itself after 30 minutes even if this script dies.
    burn = "import time\nend = time.time() + 1800\nwhile time.time() < end: pass"
    return subprocess.Popen([sys.executable, "-c", burn])


@dataclass
class Stream:
    values: list[float] = field(default_factory=list)
    quality: list[dict[str, float | None]] = field(default_factory=list)


class Streams:
    """Two engines, one plain and one slowed, measured in alternating blocks."""

    def __init__(self) -> None:
        from llama_cpp import LogitsProcessorList

        self.busy = BusyWait(0.0)
        config = {"model": "q4_k_m", "n_ctx": 512}
        self.plain = create_engine("llama_cpp", config)
        self.slowed = create_engine("llama_cpp", {**config, "logits_processor": LogitsProcessorList([self.busy])})
        for engine in (self.plain, self.slowed):
            run_workload(engine, WORKLOAD)  # warm up

    def one(self, slowed: bool) -> tuple[float, dict[str, float | None]]:
        with QualitySampler(threads=1) as sampler:
            result = run_workload(self.slowed if slowed else self.plain, WORKLOAD)
        value = result.metrics[METRIC]
        assert value is not None
        return value, sampler.figures

    def collect(self, per_stream: int, block: int) -> tuple[Stream, Stream]:
        plain, slowed = Stream(), Stream()
        while len(plain.values) < per_stream:
            for stream, slow in ((plain, False), (slowed, True)):
                for _ in range(block):
                    value, figures = self.one(slow)
                    stream.values.append(value)
                    stream.quality.append(figures)
        return plain, slowed

    def close(self) -> None:
        self.plain.close()
        self.slowed.close()


def calibrate(streams: Streams, slowdown: float) -> float:
    """Set the busy-wait so that the slowed stream is ``slowdown`` slower; two rounds of measuring and
    correcting. Returns the delay per token in seconds."""
    plain, _ = streams.collect(10, 1)
    tokens = WORKLOAD.requests * WORKLOAD.n_predict
    seconds = tokens / statistics.median(plain.values)
    streams.busy.seconds = seconds * slowdown / (1 - slowdown) / tokens
    for _ in range(2):
        plain, slowed = streams.collect(30, 1)
        # Paired repetition by repetition (alternating): the machine's drift cancels.
        measured = 1 - statistics.median([s / p for p, s in zip(plain.values, slowed.values, strict=True)])
        if measured > 0:
            streams.busy.seconds *= slowdown / measured
    return streams.busy.seconds


# -- the rules -----------------------------------------------------------------------------------------------


def speeds(stream: Stream, start: int, end: int) -> list[float]:
    return [float(q["machine_speed"] or 0) for q in stream.quality[start:end]]


def record_until_sure(stream: Stream, start: int, tolerance: Tolerance) -> int:
    """How many repetitions from ``start`` a recording takes (``core/record``: adjusted for the machine speed)."""
    n = FEWEST
    while n < MOST and start + n < len(stream.values) and not precise(
        adjusted(METRIC, stream.values[start : start + n], speeds(stream, start, start + n)), tolerance
    ):
        n += 1
    return n


def measure_until_sure(stream: Stream, start: int, baseline: Baseline, tolerance: Tolerance) -> int:
    n = FEWEST
    while (n < MOST and start + n < len(stream.values)
           and not metric_is_sure(METRIC, stream.values[start : start + n], tolerance, baseline,
                                  speeds(stream, start, start + n))):
        n += 1
    return n


def ours(stream: Stream, start: int, base: Stream, base_at: int, base_n: int, tolerance: Tolerance
         ) -> tuple[Verdict, int]:
    """The verdict pytest-llmperf reaches (as ``core/record.judge`` does: until sure, a suspect verdict measured
    again after a wait when it was disturbed, "not judged" when it still is), and the repetitions it took."""
    samples = base.values[base_at : base_at + base_n]
    reference = summary(base.quality[base_at : base_at + base_n])
    record = MetricRecord(statistics.median(samples), samples, speeds=speeds(base, base_at, base_at + base_n))
    baseline = Baseline("noise", {METRIC: record}, quality=reference)
    at, used, verdict, disturbed = start, 0, Verdict.OK, False
    for attempt in range(2):  # the measurement, and one confirming re-measurement
        if attempt and disturbed:
            at += WAIT_REPETITIONS  # waiting for the machine to quieten: time passes
        n = measure_until_sure(stream, at, baseline, tolerance)
        current = stream.values[at : at + n]
        disturbed = disturbed_share(stream.quality[at : at + n], reference) >= MAX_DISTURBED_SHARE
        verdict = judge(METRIC, record, statistics.median(current), tolerance, current,
                        current_speeds=speeds(stream, at, at + n)).verdict
        at, used = at + n, used + n
        if verdict not in (Verdict.REGRESSED, Verdict.NOT_JUDGED):
            break
    if verdict in (Verdict.REGRESSED, Verdict.NOT_JUDGED) and disturbed:
        verdict = Verdict.NOT_JUDGED
    return verdict, used


def asv_rule(baseline: list[float], current: list[float], tolerance: float) -> bool:
    """asv's rule: the two-sided Mann-Whitney U test (scipy's default method) rejects at 0.002 and the median is
    beyond the tolerance."""
    p_value = float(stats.mannwhitneyu(baseline, current, alternative="two-sided").pvalue)
    return p_value < 0.002 and statistics.median(current) < statistics.median(
        baseline
    ) * (1 - tolerance)


def point_rule(baseline: list[float], current: list[float], tolerance: float) -> bool:
    return statistics.mean(current) < statistics.mean(baseline) * (1 - tolerance)


def rates(
    plain: Stream, slowed: Stream, tolerance_text: str, k: int, comparisons: int, seed: int
) -> list[tuple[str, float, float, float, float, float]]:
    """(rule, false alarms %, detected % of judged, not judged % null, not judged % slowed, mean repetitions)."""
    tolerance = parse_tolerance(tolerance_text, metric_spec(METRIC), "benchmark")
    amount = tolerance.amount
    rng = random.Random(seed)
    room = 2 * MOST + WAIT_REPETITIONS
    size = len(plain.values)
    trials = []
    for _ in range(comparisons):
        base_at = rng.randrange(0, size - MOST)
        base_n = record_until_sure(plain, base_at, tolerance)
        # A null comparison's current measurement never overlaps its baseline.
        free = [i for i in range(0, size - room) if i >= base_at + base_n or i + room <= base_at]
        trials.append((base_at, base_n, rng.choice(free or [0]), rng.randrange(0, len(slowed.values) - room)))

    results = []
    ours_null = [ours(plain, at, plain, b_at, b_n, tolerance) for b_at, b_n, at, _ in trials]
    ours_slow = [ours(slowed, at, plain, b_at, b_n, tolerance) for b_at, b_n, _, at in trials]

    def summarise(name: str, null: list[Verdict], slow: list[Verdict], reps: float) -> None:
        judged_slow = [v for v in slow if v is not Verdict.NOT_JUDGED]
        results.append((
            name,
            sum(v is Verdict.REGRESSED for v in null) / len(null) * 100,
            sum(v is Verdict.REGRESSED for v in judged_slow) / max(len(judged_slow), 1) * 100,
            sum(v is Verdict.NOT_JUDGED for v in null) / len(null) * 100,
            sum(v is Verdict.NOT_JUDGED for v in slow) / len(slow) * 100,
            reps,
        ))

    mean_reps = statistics.mean(n for _, n in ours_null + ours_slow)
    summarise(f"pytest-llmperf until sure, confirmed ({tolerance_text})", [v for v, _ in ours_null],
              [v for v, _ in ours_slow], mean_reps)
    fixed: list[tuple[str, Callable[[list[float], list[float], float], bool]]] = [
        ("asv: Mann-Whitney p<0.002 and factor", asv_rule), (f"point rule mean:{tolerance_text}", point_rule)]
    values, slow_values = plain.values, slowed.values
    for name, rule in fixed:
        null = [rule(values[b_at : b_at + k], values[at : at + k], amount) for b_at, _, at, _ in trials]
        slow = [rule(values[b_at : b_at + k], slow_values[at : at + k], amount) for b_at, _, _, at in trials]
        summarise(f"{name} (k={k})", [Verdict.REGRESSED if x else Verdict.OK for x in null],
                  [Verdict.REGRESSED if x else Verdict.OK for x in slow], float(k))
    return results


def quality_table(quality: list[dict[str, float | None]]) -> list[str]:
    lines = []
    for name in QUALITY_FIGURES:
        values = sorted(v for q in quality if (v := q.get(name)) is not None)
        if values:
            p90 = values[int(0.9 * (len(values) - 1))]
            lines.append(f"  {name:24s} min {values[0]:8.3f}  median {statistics.median(values):8.3f}  "
                         f"p90 {p90:8.3f}  max {values[-1]:8.3f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-stream", type=int, default=200, help="repetitions in each stream")
    parser.add_argument("--block", type=int, default=10, help="repetitions per alternating block")
    parser.add_argument("--k", type=int, default=10, help="repetitions a side for asv's and the point rule")
    parser.add_argument("--slowdown", type=float, default=0.10, help="injected slowdown, as a fraction")
    parser.add_argument("--tolerance", default="5%")
    parser.add_argument("--comparisons", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neighbour", action="store_true", help="run a CPU-burning process meanwhile")
    parser.add_argument("--quality", action="store_true", help="print the quality figures' distributions")
    parser.add_argument("--save", type=Path, help="write the streams to this JSON file")
    parser.add_argument("--load", type=Path, help="judge the streams of a --save file instead of measuring")
    arguments = parser.parse_args()

    if arguments.load:
        saved = json.loads(arguments.load.read_text())
        plain, slowed = Stream(**saved["plain"]), Stream(**saved["slowed"])
        delay, elapsed, neighbour_text = saved["delay"], saved["elapsed"], saved["neighbour"]
    else:
        neighbour = neighbour_process() if arguments.neighbour else None
        streams = Streams()
        try:
            started = time.perf_counter()
            delay = calibrate(streams, arguments.slowdown)
            plain, slowed = streams.collect(arguments.per_stream, arguments.block)
            elapsed = time.perf_counter() - started
        finally:
            streams.close()
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        neighbour_text = "yes" if neighbour else "no"
        if arguments.save:
            arguments.save.write_text(json.dumps({
                "plain": plain.__dict__, "slowed": slowed.__dict__, "delay": delay, "elapsed": elapsed,
                "neighbour": neighbour_text,
            }))

    values = plain.values
    cv = statistics.stdev(values) / statistics.mean(values) * 100
    paired = (1 - statistics.median([s / p for p, s in zip(values, slowed.values, strict=True)])) * 100
    shift = (1 - statistics.median(slowed.values) / statistics.median(values)) * 100
    print(f"{METRIC}: {len(values)} unchanged + {len(slowed.values)} slowed repetitions in blocks of "
          f"{arguments.block}, {elapsed:.0f} s, neighbour={neighbour_text}")
    print(f"unchanged: median {statistics.median(values):.1f}, CV {cv:.1f}%; slowed: median "
          f"{statistics.median(slowed.values):.1f}: {shift:.1f}% slower (block-paired {paired:.1f}%; busy-wait "
          f"{delay * 1e3:.3f} ms/token)")
    if arguments.quality:
        print("quality of the unchanged repetitions:")
        print("\n".join(quality_table(plain.quality)))
        speeds = [q.get("machine_speed") for q in plain.quality]
        if all(speed is not None for speed in speeds):
            correlation = statistics.correlation(values, [float(speed or 0) for speed in speeds])
            print(f"  correlation of {METRIC} with machine_speed: {correlation:.2f}")
    print(f"{arguments.comparisons} null and {arguments.comparisons} slowed comparisons at {arguments.tolerance}:")
    print(f"{'rule':58s} {'false alarms':>12s} {'detected':>9s} {'not judged (null/slow)':>23s} {'reps':>6s}")
    for name, false, detected, nj_null, nj_slow, reps in rates(
        plain, slowed, arguments.tolerance, arguments.k, arguments.comparisons, arguments.seed
    ):
        print(f"{name:58s} {false:11.1f}% {detected:8.1f}% {nj_null:10.1f}% / {nj_slow:5.1f}% {reps:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
