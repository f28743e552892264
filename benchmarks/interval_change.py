"""Which verdicts on the project's stored baselines the exact intervals change, and why.

Until issue 28 the shift interval (``core/intervals.shift_interval``) cut the m x n pairwise differences at a
normal approximation of the Mann-Whitney U distribution; now it cuts them at the exact distribution (scipy.stats)
and says None where the samples are too few for the level (2 a side at 90%). This script judges every stored
metric that has samples (``baselines/**/*.json``, every hardware class) against its own samples moved by a grid of
changes (x0.80 ... x1.25, the stored machine speeds as the current ones, so the samples are compared as at
recording), with the metric's default tolerance, under both rules, and lists every verdict that differs with the
two cuts. Deterministic: no engine runs.

    python benchmarks/interval_change.py [--baselines baselines]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from unittest import mock

from pytest_llmperf.core import verdict as verdicts
from pytest_llmperf.core.baseline import MetricRecord, load_baseline
from pytest_llmperf.core.intervals import Interval, moses_cut
from pytest_llmperf.core.tolerance import DEFAULT_TOLERANCES, ToleranceTable

FACTORS = (0.80, 0.90, 0.93, 0.95, 0.97, 0.99, 1.0, 1.01, 1.03, 1.05, 1.07, 1.10, 1.25)


def old_cut(m: int, n: int, level: float) -> int:
    """The normal-approximation cut used before (kept here only to compare with)."""
    z = statistics.NormalDist().inv_cdf(1 - (1 - level) / 2)
    return max(math.floor(m * n / 2 - z * math.sqrt(m * n * (m + n + 1) / 12)), 0)


def old_shift_interval(baseline: Sequence[float], current: Sequence[float], level: float = 0.95, *,
                       relative: bool = True) -> Interval | None:
    """The old interval, as it was."""
    if len(baseline) < 2 or len(current) < 2:
        return None
    if relative:
        if min(baseline) <= 0 or min(current) <= 0:
            return None
        a, b = [math.log(x) for x in baseline], [math.log(x) for x in current]
    else:
        a, b = list(baseline), list(current)
    differences = sorted(y - x for y in b for x in a)
    cut = old_cut(len(a), len(b), level)
    if cut >= len(differences) // 2:
        cut = max(len(differences) // 2 - 1, 0)
    low, high, estimate = differences[cut], differences[-cut - 1], statistics.median(differences)
    if relative:
        return Interval(math.exp(estimate), math.exp(low), math.exp(high))
    return Interval(estimate, low, high)


def stored(directory: Path) -> Iterator[tuple[str, str, MetricRecord]]:
    """(file, metric, record) of every stored metric with at least 2 samples, every hardware class."""
    for path in sorted(directory.rglob("*.json")):
        if path.name.endswith(".study.json"):
            continue
        document = load_baseline(path)
        if document is None:
            continue
        for entry in document.entries:
            for name, record in sorted(entry.metrics.items()):
                if len(record.samples) >= 2 and math.isclose(statistics.median(record.samples), record.value):
                    yield str(path.relative_to(directory)), name, record


def shown(comparison: verdicts.MetricComparison) -> str:
    return comparison.verdict.value + ("" if comparison.sure else " (not sure)")


def sides(name: str, record: MetricRecord, current: list[float], speeds: list[float]) -> str:
    """How many samples each side had after matching machine speeds, and the old and exact cuts for them."""
    matched = verdicts.same_machine(name, record, current, speeds)
    m, n = (len(matched[0]), len(matched[1])) if matched is not None else (len(record.samples), len(current))
    exact = moses_cut(m, n, verdicts.LEVEL)
    return (f"{m} and {n} samples at the same machine speed, cut {old_cut(m, n, verdicts.LEVEL)} -> "
            f"{exact[0] if exact else 'none: too few'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    args = parser.parse_args(argv)
    changed: list[str] = []
    judged = 0
    sizes: Counter[int] = Counter()
    for path, name, record in stored(args.baselines):
        tolerance = ToleranceTable([("defaults", DEFAULT_TOLERANCES)]).for_metric(name.rsplit(".", 1)[-1])
        if tolerance.kind == "stderr":
            continue
        sizes[len(record.samples)] += 1
        for factor in FACTORS:
            current = [value * factor for value in record.samples]
            speeds = list(record.speeds)

            arguments = (name, record, statistics.median(current), tolerance, current)
            new = verdicts.judge(*arguments, current_speeds=speeds)
            with mock.patch.object(verdicts, "shift_interval", old_shift_interval), \
                    mock.patch.object(verdicts, "moses_cut", lambda m, n, level: (0, None)):
                old = verdicts.judge(*arguments, current_speeds=speeds)
            judged += 1
            if (old.verdict, old.sure) != (new.verdict, new.sure):
                changed.append(f"{path} {name} x{factor:g} ({sides(name, record, current, speeds)}): "
                               f"{shown(old)} -> {shown(new)}")
    print(f"{judged} verdicts ({sum(sizes.values())} stored metrics x {len(FACTORS)} changes; samples a side: "
          + ", ".join(f"{n}: {count}" for n, count in sorted(sizes.items())) + ")")
    print(f"{len(changed)} changed ({dict(Counter(line.rsplit(': ', 1)[1] for line in changed))}):")
    for line in changed:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
