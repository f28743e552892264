"""Instructions per token against the wall clock, on the same work, quiet and beside two busy loops (issue 27).

The work: llama-bench's tg of ``--n-gen`` tokens on the embedded Q4_K_M, one thread, flash attention on, after a
context of ``n_depth`` tokens. Unchanged: depth 0. Changed: depth ``--depth`` (23: each step's attention reads 23
more cached tokens, +2.0% instructions here) — a real change in work, not a busy-wait.

Baselines, recorded quiet at the start: one counted run of the unchanged work (``measure/instructions.py``), and
``--baseline-repetitions`` wall-clock repetitions of it (``measure/bench.py``, each with the machine's speed).

Then per condition (quiet; two busy loops), ``--processes`` rounds; each round, for the unchanged and the changed
work: one counted process of ``--repetitions`` repetitions (each repetition one comparison against the counted
baseline, tolerance 1%: ``verdict.judge`` as the gate does), and ``--repetitions`` wall-clock comparisons of
``--wall-k`` repetitions each against the wall-clock baseline, judged by the same rule with the machine's speed
(at 1% and at the suite's 10%). Wall-clock and counted runs alternate; nothing else runs but the busy loops.

    python benchmarks/instructions_noise.py            # ~25 min here
    python benchmarks/instructions_noise.py --processes 1 --repetitions 3    # a smoke run
"""

from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import time

from pytest_llmperf.core.baseline import MetricRecord
from pytest_llmperf.core.metrics import metric_spec
from pytest_llmperf.core.tolerance import parse_tolerance
from pytest_llmperf.core.verdict import Verdict, judge
from pytest_llmperf.engines import create_engine
from pytest_llmperf.measure.bench import BenchResult, bench
from pytest_llmperf.measure.instructions import instructions

COUNTED = "tg_instructions_per_token"
WALL = "tg_tok_s"


def busy_loops(n: int) -> list[subprocess.Popen[bytes]]:
    # Bounded: each stops by itself after 60 minutes even if this script dies.
    burn = "import time\nend = time.time() + 3600\nwhile time.time() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(n)]


def wall_record(result: BenchResult) -> MetricRecord:
    speeds = [figures.get("machine_speed") for figures in result.quality]
    return MetricRecord(statistics.median(result.tg), list(result.tg),
                        speeds=[float(s) for s in speeds if s is not None] if None not in speeds else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--n-gen", type=int, default=16)
    parser.add_argument("--depth", type=int, default=23)
    parser.add_argument("--wall-k", type=int, default=5, help="wall-clock repetitions per comparison")
    parser.add_argument("--baseline-repetitions", type=int, default=30)
    arguments = parser.parse_args()
    n_gen, depth = arguments.n_gen, arguments.depth
    engine = create_engine("llama_cpp", {"model": "q4_k_m", "flash_attn": True, "n_ctx": 256})
    counted_tolerance = parse_tolerance("1%", metric_spec(COUNTED), "benchmark")
    wall_tolerances = {tol: parse_tolerance(tol, metric_spec(WALL), "benchmark") for tol in ("1%", "10%")}

    started = time.perf_counter()
    counted_base = instructions(engine, n_prompt=0, n_gen=n_gen)
    if counted_base.unavailable:
        raise SystemExit(counted_base.unavailable)
    base_value = counted_base.tg[0]
    counted_baseline = MetricRecord(base_value, [base_value])
    bench(engine, n_prompt=0, n_gen=n_gen, repetitions=3)  # warm-up
    wall_baseline = wall_record(bench(engine, n_prompt=0, n_gen=n_gen, repetitions=arguments.baseline_repetitions))
    print(f"baselines: {base_value:,.1f} instr/token (counted in {counted_base.seconds:.0f} s), "
          f"{wall_baseline.value:.1f} tok/s (median of {len(wall_baseline.samples)})", flush=True)

    verdicts: dict[tuple[str, str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    changes: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    seconds: dict[str, list[float]] = collections.defaultdict(list)
    for condition in ("quiet", "two busy loops"):
        loops = busy_loops(2) if condition != "quiet" else []
        try:
            for round_number in range(arguments.processes):
                for work, n_depth in (("unchanged", 0), (f"+{depth} context tokens", depth)):
                    counted = instructions(engine, n_prompt=0, n_gen=n_gen, n_depth=n_depth,
                                           repetitions=arguments.repetitions)
                    seconds[condition].append(counted.seconds)
                    for value in counted.tg:
                        verdict = judge(COUNTED, counted_baseline, value, counted_tolerance, [value])
                        verdicts[(condition, work, "instructions 1%")][verdict.verdict.value] += 1
                        changes[(condition, work, "instructions")].append(value / base_value - 1)
                    for _ in range(arguments.repetitions):
                        current = wall_record(bench(engine, n_prompt=0, n_gen=n_gen, n_depth=n_depth,
                                                    repetitions=arguments.wall_k))
                        changes[(condition, work, "wall")].append(current.value / wall_baseline.value - 1)
                        for label, tolerance in wall_tolerances.items():
                            comparison = judge(WALL, wall_baseline, current.value, tolerance, current.samples,
                                               current_speeds=current.speeds)
                            verdicts[(condition, work, f"wall clock {label}")][comparison.verdict.value] += 1
                print(f"{condition}: round {round_number + 1}/{arguments.processes} done "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
    engine.close()

    print("\n| condition | work | rule | comparisons | regressed | ok | improved | not judged | median change |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (condition, work, rule), counter in verdicts.items():
        total = sum(counter.values())
        regressed, ok, improved = (counter[verdict.value] for verdict in (Verdict.REGRESSED, Verdict.OK,
                                                                           Verdict.IMPROVED))
        kind = "instructions" if rule.startswith("instructions") else "wall"
        values = changes[(condition, work, kind)]
        # Wall clock: tok/s, so a slower run is a negative change; instructions: more per token is positive.
        shown = f"{statistics.median(values):+.3%} (range {min(values):+.3%} .. {max(values):+.3%})"
        rest = total - regressed - ok - improved
        print(f"| {condition} | {work} | {rule} | {total} | {regressed} | {ok} | {improved} | {rest} | {shown} |")
    for condition, values in seconds.items():
        print(f"\n{condition}: a counted process of {arguments.repetitions} x tg{n_gen} took "
              f"{statistics.median(values):.1f} s (median of {len(values)})")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
