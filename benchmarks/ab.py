"""How often an interleaved A/B (``llmperf.ab``) calls two configurations ``--difference`` apart right.

A is the embedded model (Q4_K_M, one thread); B is the same model slowed by a busy-wait after every token that
lasts ``difference / (1 - difference)`` of the time the token took, so B is ``--difference`` slower whatever speed
the host runs at (a fixed busy-wait would be a smaller share of a token when the host is slow). Rounds run in
``llmperf.ab``'s order (A B, B A, ...) on the real engine, with
``--neighbour`` beside a CPU-burning process. Then each trial is a contiguous run of rounds (overlapping between
trials; seeded start) judged by ``llmperf.ab``'s own rule: pairs are added from 6 until B/A's interval
(``paired_interval`` at ``LEVEL``) is within ``--precision`` on each side, up to 50. A trial is called right when
the interval lies wholly below 1 (B slower), wrong when wholly above, and undecided otherwise. The same trials
judged unpaired (A's and B's samples as two independent measurements, Moses interval) show what pairing buys.

    python benchmarks/ab.py
    python benchmarks/ab.py --neighbour
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from noise import WORKLOAD, neighbour_process

from pytest_llmperf.core.intervals import paired_interval, shift_interval
from pytest_llmperf.core.verdict import LEVEL
from pytest_llmperf.engines import create_engine
from pytest_llmperf.measure.ab import DEFAULT_PRECISION, _precise
from pytest_llmperf.measure.runner import run_workload

METRIC = "completion_tok_s"
FEWEST, MOST = 6, 50


class RelativeBusyWait:
    """A logits processor that burns ``fraction / (1 - fraction)`` of the time since its previous call: each token
    takes ``1 / (1 - fraction)`` times as long, so throughput drops by ``fraction``."""

    def __init__(self, fraction: float) -> None:
        self.factor = fraction / (1 - fraction)
        self.last: float | None = None

    def __call__(self, input_ids: object, scores: object) -> object:
        now = time.perf_counter()
        if self.last is not None and now - self.last < 0.5:  # not across requests
            end = now + (now - self.last) * self.factor
            while time.perf_counter() < end:
                pass
        self.last = time.perf_counter()
        return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--difference", type=float, default=0.05)
    parser.add_argument("--precision", type=float, default=DEFAULT_PRECISION)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neighbour", action="store_true")
    arguments = parser.parse_args()
    from llama_cpp import LogitsProcessorList

    neighbour = neighbour_process() if arguments.neighbour else None
    busy = RelativeBusyWait(arguments.difference)
    a_engine = create_engine("llama_cpp", {"model": "q4_k_m", "n_ctx": 512})
    b_engine = create_engine("llama_cpp", {"model": "q4_k_m", "n_ctx": 512,
                                           "logits_processor": LogitsProcessorList([busy])})

    def rounds(count: int) -> tuple[list[float], list[float]]:
        a: list[float] = []
        b: list[float] = []
        for index in range(count):
            for side in ("ab" if index % 2 == 0 else "ba"):
                engine, values = (a_engine, a) if side == "a" else (b_engine, b)
                value = run_workload(engine, WORKLOAD).metrics[METRIC]
                assert value is not None
                values.append(value)
        return a, b

    try:
        started = time.perf_counter()
        rounds(2)  # warm up
        a, b = rounds(arguments.rounds)
        elapsed = time.perf_counter() - started
    finally:
        a_engine.close()
        b_engine.close()
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()

    ratio = statistics.median([y / x for x, y in zip(a, b, strict=True)])
    cv = statistics.stdev(a) / statistics.mean(a) * 100
    print(f"{arguments.rounds} rounds in {elapsed:.0f} s, neighbour={'yes' if neighbour else 'no'}: A median "
          f"{statistics.median(a):.1f} tok/s (CV {cv:.1f}%), B/A median of pairs {ratio:.3f} "
          f"({(1 - ratio) * 100:.1f}% slower)")
    rng = random.Random(arguments.seed)
    outcomes = {"paired": [0, 0, 0], "unpaired": [0, 0, 0]}
    pairs_used = []
    for _ in range(arguments.trials):
        start = rng.randrange(0, len(a) - MOST)
        n = FEWEST
        while n < MOST and not _precise(paired_interval(a[start : start + n], b[start : start + n], LEVEL),
                                        arguments.precision):
            n += 1
        pairs_used.append(n)
        for kind, interval in (
            ("paired", paired_interval(a[start : start + n], b[start : start + n], LEVEL)),
            ("unpaired", shift_interval(a[start : start + n], b[start : start + n], LEVEL)),
        ):
            assert interval is not None
            index = 0 if interval.high < 1 else 1 if interval.low > 1 else 2
            outcomes[kind][index] += 1
    print(f"{arguments.trials} trials, pairs per trial: mean {statistics.mean(pairs_used):.1f}, "
          f"max {max(pairs_used)}; precision {arguments.precision:.1%}")
    for kind, (right, wrong, undecided) in outcomes.items():
        total = arguments.trials
        print(f"  {kind:9s} called right {right / total * 100:5.1f}%  wrong {wrong / total * 100:5.1f}%  "
              f"undecided {undecided / total * 100:5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
