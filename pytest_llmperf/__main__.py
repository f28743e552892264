"""``python -m pytest_llmperf compare BEFORE.json AFTER.json``: a before/after table of two JSON reports;
``compare REPORT.json``: the A/B tables of one report's ``llmperf.ab`` tests (A and B columns, B - A, %, B/A)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_llmperf.errors import LlmperfError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmperf")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare", help="before/after table of two --llmperf-report JSON files (one file: its A/B tables)"
    )
    compare.add_argument("before", type=Path)
    compare.add_argument("after", type=Path, nargs="?")
    arguments = parser.parse_args(argv)

    from pytest_llmperf.reports.compare import ab_report, compare_reports
    from pytest_llmperf.reports.json_report import load_report, load_report_values

    try:
        if arguments.after is None:
            lines = ab_report(load_report(arguments.before))
            if not lines:
                print(f"error: {arguments.before} has no A/B test (llmperf.ab); give two reports to compare",
                      file=sys.stderr)
                return 2
        else:
            lines = compare_reports(load_report_values(arguments.before), load_report_values(arguments.after))
    except LlmperfError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
