"""``unstall report FILE.json``: turn a saved report into a summary, HTML, a trace or JSON.

With no output option the terminal summary is printed. Bad input (a missing file, not
JSON, not a report, an unwritable output) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from unstall._exceptions import ReportError
from unstall._report.records import Report
from unstall._report.writers import WRITERS

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
    for writer in _OPTION_ORDER:
        parser.add_argument(writer.option, metavar="FILE", help=f"write {writer.describes} to FILE")
    return parser


# The order the files are written in (and listed in --help): as it always was.
_OPTION_ORDER = [WRITERS[name] for name in ("html", "trace", "json")]


def _summary(report: Report) -> str:
    from unstall._report.format import should_color
    from unstall._report.summary import render_summary

    return render_summary(report, color=should_color(sys.stdout))


def main(argv: list[str]) -> int:
    """Run ``unstall report``; returns the exit status (0, or 2 on bad input)."""
    opts = _parser().parse_args(argv)
    try:
        report = Report.read(opts.report)
    except ReportError as exc:
        print(f"unstall report: {exc}", file=sys.stderr)
        return 2
    outputs = [(w, getattr(opts, w.name)) for w in _OPTION_ORDER]
    outputs = [(writer, path) for writer, path in outputs if path]
    if not outputs:
        print(_summary(report))
        return 0
    for writer, path in outputs:
        try:
            writer.write(report, path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            print(f"unstall report: cannot write {os.fspath(path)!r}: {reason}", file=sys.stderr)
            return 2
        print(f"unstall: wrote {writer.name} to {path}", file=sys.stderr)
    return 0
