"""``python -m pytest_llmperf compare A.json B.json [C.json ...]``: runs side by side (each value, the difference
from the first and the change in %, marked within tolerance / better / worse), the fingerprint differences, and
with ``--plot DIR`` the before/after figures; ``compare REPORT.json``: the A/B tables of one report's
``llmperf.ab`` tests (A and B columns, B - A, %, B/A)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_llmperf.errors import LlmperfError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmperf")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare", help="runs side by side: two or more --llmperf-report JSON files (one file: its A/B tables)"
    )
    compare.add_argument("reports", type=Path, nargs="+", metavar="REPORT")
    compare.add_argument("--plot", type=Path, metavar="DIR", help="draw the before/after figures (PNG) in DIR")
    compare.add_argument("--fail-on-regression", action="store_true",
                         help="exit 1 when a metric moved beyond its tolerance in its bad direction, or a later "
                              "report lacks a test or metric the first report gated")
    arguments = parser.parse_args(argv)

    from pytest_llmperf.reports.compare import compare_runs, draw_runs, labels_of, read_run
    from pytest_llmperf.reports.json_report import load_report

    try:
        if len(arguments.reports) == 1:
            if arguments.plot or arguments.fail_on_regression:
                parser.error("--plot and --fail-on-regression compare two or more reports")
            from pytest_llmperf.reports.compare import ab_report

            lines = ab_report(load_report(arguments.reports[0]))
            if not lines:
                print(f"error: {arguments.reports[0]} has no A/B test (llmperf.ab); give two or more reports to "
                      "compare", file=sys.stderr)
                return 2
            print("\n".join(lines))
            return 0
        labels = labels_of(arguments.reports)
        runs = [read_run(path, label) for path, label in zip(arguments.reports, labels, strict=True)]
        lines, regressions, dropped = compare_runs(runs)
        if arguments.plot is not None:
            from pytest_llmperf.reports.figures import available

            missing = available()
            if missing is not None:
                print(f"error: --plot: {missing}", file=sys.stderr)
                return 2
            written, notes = draw_runs(runs, arguments.plot)
            lines += ["", *[f"figure: {path}" for path in written], *notes]
    except LlmperfError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if arguments.fail_on_regression and (regressions or dropped):
        if regressions:
            print(f"\n{len(regressions)} metrics moved beyond tolerance in their bad direction:", file=sys.stderr)
            print("\n".join(f"  {line}" for line in regressions), file=sys.stderr)
        if dropped:
            print(f"\n{len(dropped)} gates of {runs[0].label} are missing from a later report (a dropped gate is "
                  "not a pass):", file=sys.stderr)
            print("\n".join(f"  {line}" for line in dropped), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
