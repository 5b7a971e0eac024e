"""``unstall report FILE.json``: turn a saved report into a summary, HTML, a trace or JSON.

With no output option the terminal summary is printed. Bad input (a missing file, not
JSON, not a report, an unwritable output) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from unstall._exceptions import ReportError
from unstall._report.records import Report

__all__ = ["main"]

_DESCRIPTION = (
    "Turn a report saved by `unstall run --json FILE` into a terminal summary (the default), "
    "a self-contained HTML timeline, a Chrome/Perfetto trace, or JSON again."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"unstall report: {message} (see `unstall report --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unstall report", description=_DESCRIPTION)
    parser.add_argument("report", metavar="FILE.json", help="a report saved with --json")
    parser.add_argument("--html", metavar="FILE", help="write the HTML timeline to FILE")
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace to FILE")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE")
    return parser


def _writers() -> dict[str, Callable[[Report, str], None]]:
    from unstall._report.html import write_html
    from unstall._report.trace import write_trace

    return {
        "html": write_html,
        "trace": write_trace,
        "json": lambda report, path: report.write(path),
    }


def _summary(report: Report) -> str:
    from unstall._report.summary import render_summary, should_color

    return render_summary(report, color=should_color(sys.stdout))


def main(argv: list[str]) -> int:
    """Run ``unstall report``; returns the exit status (0, or 2 on bad input)."""
    opts = _parser().parse_args(argv)
    try:
        report = Report.read(opts.report)
    except ReportError as exc:
        print(f"unstall report: {exc}", file=sys.stderr)
        return 2
    outputs = [(kind, getattr(opts, kind)) for kind in ("html", "trace", "json")]
    outputs = [(kind, path) for kind, path in outputs if path]
    if not outputs:
        print(_summary(report))
        return 0
    writers = _writers()
    for kind, path in outputs:
        try:
            writers[kind](report, path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            print(f"unstall report: cannot write {os.fspath(path)!r}: {reason}", file=sys.stderr)
            return 2
        print(f"unstall: wrote {kind} to {path}", file=sys.stderr)
    return 0
