"""False alarms and detection of the regression rule, on the real llama.cpp engine.

Runs the embedded model (Q4_K_M, 2 threads) for many repetitions with no change, then with an injected
slowdown (a logits processor that busy-waits so each token costs ``--slowdown`` more), optionally with a
CPU-burning neighbour process. Consecutive repetitions form groups of ``--k``; every pair of unchanged
groups is a null comparison, every (unchanged, slowed) pair a detection trial. Each comparison is judged by

- pytest-llmperf's rule (``compare.judge``: median and best repetition beyond tolerance), alone and as the
  plugin applies it by default (``--llmperf-confirm 1``): a regression must be confirmed by the next
  measurement in time (the next group), as ``llmperf.measure`` re-measures right away, and
- pytest-benchmark's point rule ``mean:5%`` (flag when the mean is more than 5% worse),

on ``completion_tok_s`` with a ``--tolerance`` relative tolerance, and the rates are printed.

    python benchmarks/noise.py --repetitions 60 --k 5
    python benchmarks/noise.py --repetitions 60 --k 5 --neighbour
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

from pytest_llmperf.core.baseline import MetricRecord
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.tolerance import parse_tolerance
from pytest_llmperf.core.verdict import Verdict, judge
from pytest_llmperf.core.workload import Workload
from pytest_llmperf.engines import create_engine
from pytest_llmperf.measure.runner import run_workload

METRIC = "completion_tok_s"


class BusyWait:
    """A logits processor that burns ``seconds`` of CPU per token: a real, uniform slowdown."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, input_ids: object, scores: object) -> object:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        return scores


def collect(repetitions: int, delay_s: float) -> list[float]:
    from llama_cpp import LogitsProcessorList

    config: dict[str, object] = {"model": "q4_k_m", "n_threads": 2, "n_ctx": 512}
    if delay_s:
        config["logits_processor"] = LogitsProcessorList([BusyWait(delay_s)])
    engine = create_engine("llama_cpp", config)
    try:
        workload = Workload(n_prompt=64, n_predict=64, requests=2, warmup=1, repetitions=repetitions)
        return run_workload(engine, workload).samples[METRIC]
    finally:
        engine.close()


def groups(samples: Sequence[float], k: int) -> list[list[float]]:
    return [list(samples[i : i + k]) for i in range(0, len(samples) - k + 1, k)]


def ours(baseline: list[float], current: list[float], tolerance_text: str) -> bool:
    tolerance = parse_tolerance(tolerance_text, metric_spec(METRIC), "benchmark")
    record = MetricRecord(statistics.median(baseline), baseline)
    return judge(METRIC, record, statistics.median(current), tolerance, current).verdict is Verdict.REGRESSED


def point_rule(baseline: list[float], current: list[float]) -> bool:
    return statistics.mean(current) < statistics.mean(baseline) * 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=60)
    parser.add_argument("--k", type=int, default=5, help="repetitions per measurement")
    parser.add_argument("--slowdown", type=float, default=0.10, help="injected slowdown, as a fraction")
    parser.add_argument("--tolerance", default="5%")
    parser.add_argument("--neighbour", action="store_true", help="run a CPU-burning process meanwhile")
    arguments = parser.parse_args()

    neighbour = None
    if arguments.neighbour:
        # Bounded: it stops by itself after 15 minutes even if this script dies.
        burn = "import time\nend = time.time() + 900\nwhile time.time() < end: pass"
        neighbour = subprocess.Popen([sys.executable, "-c", burn])
    try:
        started = time.perf_counter()
        unchanged = collect(arguments.repetitions, 0.0)
        per_token_s = 1.0 / statistics.median(unchanged)
        # A token costs per_token_s; adding slowdown/(1-slowdown) of it lowers throughput by `slowdown`.
        delay = per_token_s * arguments.slowdown / (1 - arguments.slowdown)
        slowed = collect(arguments.repetitions, delay)
        elapsed = time.perf_counter() - started
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()

    base_groups, slow_groups = groups(unchanged, arguments.k), groups(slowed, arguments.k)
    # (baseline, current, the measurement right after current): the re-measurement that confirms.
    null_pairs = [
        (a, base_groups[j], base_groups[j + 1])
        for (i, a), (j, _) in itertools.permutations(enumerate(base_groups), 2)
        if j + 1 < len(base_groups)
    ]
    slow_pairs = [(a, slow_groups[j], slow_groups[j + 1]) for a in base_groups for j in range(len(slow_groups) - 1)]
    cv = statistics.stdev(unchanged) / statistics.mean(unchanged) * 100
    shift = (1 - statistics.median(slowed) / statistics.median(unchanged)) * 100
    print(
        f"{METRIC}: {arguments.repetitions} unchanged + {arguments.repetitions} slowed repetitions "
        f"in {elapsed:.0f} s, neighbour={'yes' if neighbour else 'no'}"
    )
    print(
        f"unchanged: median {statistics.median(unchanged):.1f}, CV {cv:.1f}%, min {min(unchanged):.1f}; "
        f"slowed: median {statistics.median(slowed):.1f} ({shift:.1f}% slower)"
    )
    print(f"k={arguments.k}: {len(null_pairs)} null comparisons, {len(slow_pairs)} slowdown comparisons")
    print(f"{'rule':48s} {'false alarms':>14s} {'detected':>10s}")
    tolerance = arguments.tolerance
    rules: list[tuple[str, Callable[[list[float], list[float], list[float]], bool]]] = [
        (
            f"pytest-llmperf median+best, confirmed ({tolerance})",
            lambda a, b, c: ours(a, b, tolerance) and ours(a, c, tolerance),
        ),
        (f"pytest-llmperf median+best only ({tolerance})", lambda a, b, c: ours(a, b, tolerance)),
        ("pytest-benchmark point rule mean:5%", lambda a, b, c: point_rule(a, b)),
    ]
    for name, rule in rules:
        false_alarms = sum(rule(a, b, c) for a, b, c in null_pairs) / len(null_pairs) * 100
        detected = sum(rule(a, b, c) for a, b, c in slow_pairs) / len(slow_pairs) * 100
        print(f"{name:48s} {false_alarms:13.1f}% {detected:9.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
