"""``python -m pytest_llmperf compare BEFORE.json AFTER.json``: a before/after table of two JSON reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytest_llmperf.errors import LlmperfError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmperf")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="before/after table of two --llmperf-report JSON files")
    compare.add_argument("before", type=Path)
    compare.add_argument("after", type=Path)
    arguments = parser.parse_args(argv)

    from pytest_llmperf.reports.compare import compare_reports
    from pytest_llmperf.reports.json_report import load_report_values

    try:
        lines = compare_reports(load_report_values(arguments.before), load_report_values(arguments.after))
    except LlmperfError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
