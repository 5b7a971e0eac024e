"""The terminal forms of a report: the end-of-run summary and the live "stuck" line.

Plain text with optional ANSI colour, no dependency; whether to colour is decided by
:func:`unstall._report.format.should_color` (``NO_COLOR``, ``FORCE_COLOR``, a terminal).
"""

from __future__ import annotations

import linecache
import shutil
from collections import Counter
from collections.abc import Sequence

from unstall._report.format import format_duration, short_path, should_color
from unstall._report.records import Frame, Report, Stall, group_by_culprit

__all__ = ["hang_worth_a_line", "render_hang_line", "render_summary"]

_MAX_GROUPS = 12
_RESET = "\033[0m"
_STYLES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "cyan": "36",
    "where": "1;36",
}


class _Painter:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str) -> str:
        if not self.color or not text:
            return text
        return f"\033[{_STYLES[style]}m{text}{_RESET}"


def _source_line(frame: Frame) -> str | None:
    if frame.code:
        return frame.code
    text = linecache.getline(frame.file, frame.line).strip()
    return text or None


def _where(frame: Frame | None, cwd: str | None) -> str:
    if frame is None:
        return "(no frame of your own code was on the stack)"
    return f"{short_path(frame.file, cwd)}:{frame.line} in {frame.function}"


def render_hang_line(stall: Stall, *, color: bool = False, cwd: str | None = None) -> str:
    """One line for a stall still going on, e.g.

    ``unstall: loop in MainThread stuck for 2.04 s at app.py:12 in handler: time.sleep(3)``.
    """
    paint = _Painter(color)
    where = "an unknown place" if stall.culprit is None else _where(stall.culprit, cwd)
    what = _source_line(stall.culprit) if stall.culprit else None
    if what is None and stall.call:
        what = f"{stall.call}(...)"
    tail = f": {what}" if what else ""
    stuck = paint(f"stuck for {format_duration(stall.duration_s)}", "yellow")
    return f"unstall: loop in {stall.thread} {stuck} at {paint(where, 'where')}{tail}"


# Live lines of a long hang thin out (the --json file still follows every update).
_MILESTONES_S = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)


def hang_worth_a_line(previous: Stall | None, stall: Stall) -> bool:
    """A new hang, a hang that moved to another line, or one that passed a milestone."""
    if previous is None or abs(previous.start_s - stall.start_s) > 1e-3:
        return True
    if previous.culprit != stall.culprit:
        return True
    before, now = previous.duration_s, stall.duration_s
    passed = [m for m in _MILESTONES_S if before < m <= now]
    return bool(passed) or (now >= 60.0 and before // 60.0 != now // 60.0)


def _most_common(values: Sequence[str | None]) -> str | None:
    present = [v for v in values if v]
    return Counter(present).most_common(1)[0][0] if present else None


def _some(values: Sequence[str | None], limit: int = 2) -> str:
    unique = list(dict.fromkeys(v for v in values if v))
    shown = ", ".join(unique[:limit])
    return shown + (f" +{len(unique) - limit} more" if len(unique) > limit else "")


def _context(group: Sequence[Stall]) -> str:
    parts: list[str] = []
    call = _most_common([s.call for s in group])
    if call:
        parts.append(f"call: {call}")
    tasks = [f"{s.task} ({s.coro})" if s.task and s.coro else s.task for s in group]
    if any(tasks):
        parts.append(f"task: {_some(tasks)}")
    elif any(s.callback for s in group):
        parts.append(f"callback: {_some([s.callback for s in group], 1)}")
    parts.append(f"thread: {_some([s.thread for s in group])}")
    if any(s.pid is not None for s in group):
        parts.append(f"process: {_some([_process(s) for s in group])}")
    return "   ".join(parts)


def _served(group: Sequence[Stall]) -> str:
    """The requests and traces the group's stalls belonged to (empty when none is known)."""
    parts: list[str] = []
    routes = [_route(s) for s in group]
    if any(routes):
        parts.append(f"request: {_some(routes)}")
    traces = [s.context.get("trace_id") for s in group]
    if any(traces):
        parts.append(f"trace: {_some(traces, 1)}")
    return "   ".join(parts)


def _route(stall: Stall) -> str | None:
    route = stall.context.get("http.route")
    if not route:
        return None
    return f"{stall.context.get('http.method', '')} {route}".strip()


def _process(stall: Stall) -> str | None:
    if stall.pid is None:
        return None
    return f"{stall.process} (pid {stall.pid})" if stall.process else f"pid {stall.pid}"


def _processes(report: Report) -> str:
    """``, 3 processes`` when ``unstall run`` followed children; empty otherwise."""
    count = len(report.processes)
    return f", {count} processes" if count > 1 else ""


def _clip(text: str, room: int) -> str:
    return text if len(text) <= room else text[: max(room - 3, 1)] + "..."


def _headline(report: Report, paint: _Painter) -> str:
    stalls = report.stalls
    total = sum(s.duration_s for s in stalls)
    times = "once" if len(stalls) == 1 else f"{len(stalls)} times"
    return (
        paint(f"unstall: the event loop stalled {times}, {format_duration(total)} in total", "bold")
        + f" (watched {format_duration(report.duration_s)}{_processes(report)},"
        + f" threshold {format_duration(report.threshold_s)})"
    )


def _quiet_line(report: Report) -> str:
    loops = len(report.loops)
    watched = f"watched {format_duration(report.duration_s)}{_processes(report)}"
    if not loops:
        return f"unstall: no asyncio event loop ran, so nothing stalled ({watched})."
    watched += f", {loops} loop{'s' if loops != 1 else ''}"
    above = format_duration(report.threshold_s)
    return f"unstall: the loop never stalled above {above} ({watched})."


def render_summary(
    report: Report, *, color: bool | None = None, width: int | None = None, cwd: str | None = None
) -> str:
    """Render ``report`` for a terminal, grouped by culprit line, the costliest first.

    Args:
        report: What a watcher saw.
        color: Use ANSI colours; ``None`` decides with :func:`should_color` on stderr.
        width: Line width to fit source lines into (default: the terminal's width).
        cwd: Show paths relative to this directory (default: the current one).

    Returns:
        The text, without a trailing newline. With no stalls it is a single line saying
        the loop never stalled above the threshold (or that no loop ran, when the report
        lists no loop) and how long it was watched. The report's notes follow, one
        line each.
    """
    notes = [f"  note: {note}" for note in report.notes]
    if not report.stalls:
        return "\n".join([_quiet_line(report), *notes])
    paint = _Painter(should_color() if color is None else color)
    width = width or shutil.get_terminal_size(fallback=(100, 24)).columns
    groups = group_by_culprit(report.stalls)
    rows = [_numbers(group) for _, group in groups]
    heads = ("count", "total", "worst")
    cols = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    table = _Table(cols, paint, cwd, room=max(width - _Table.indent_of(cols), 20))
    lines = [_headline(report, paint), "", paint("  " + table.cells(heads) + "  where", "dim")]
    for (culprit, group), row in zip(groups[:_MAX_GROUPS], rows, strict=False):
        lines += table.group(culprit, group, row)
    if len(groups) > _MAX_GROUPS:
        lines.append(f"  ... and {len(groups) - _MAX_GROUPS} more places (see --json for all)")
    counted = report.stall_count - len(report.stalls)
    if counted:
        lines.append(
            f"  ... and {counted} more stalls counted but not kept (max_records), "
            f"at {len(report.aggregated)} places (see --json for all)"
        )
    return "\n".join([*lines, *notes])


def _numbers(group: Sequence[Stall]) -> tuple[str, str, str]:
    durations = [s.duration_s for s in group]
    return f"{len(group)}x", format_duration(sum(durations)), format_duration(max(durations))


class _Table:
    """Lays out one culprit group: the numbers, then its details under the ``where`` column."""

    def __init__(self, cols: list[int], paint: _Painter, cwd: str | None, room: int) -> None:
        self.cols, self.paint, self.cwd, self.room = cols, paint, cwd, room
        self.indent = " " * self.indent_of(cols)

    @staticmethod
    def indent_of(cols: list[int]) -> int:
        return sum(cols) + 2 * len(cols) + 2

    def cells(self, values: Sequence[str]) -> str:
        return "  ".join(v.rjust(c) for v, c in zip(values, self.cols, strict=True))

    def group(self, culprit: Frame | None, group: Sequence[Stall], row: Sequence[str]) -> list[str]:
        paint, indent = self.paint, self.indent
        worst = max(group, key=lambda s: s.duration_s)
        numbers = paint(self.cells(row), "red" if worst.duration_s >= 1.0 else "yellow")
        lines = ["  " + numbers + "  " + paint(_where(culprit, self.cwd), "where")]
        code = _source_line(culprit) if culprit else None
        if culprit and code:
            lines.append(indent + _clip(f"{culprit.line} | {code}", self.room))
        lines.append(indent + paint(_clip(_context(group), self.room), "dim"))
        served = _served(group)
        if served:
            lines.append(indent + paint(_clip(served, self.room), "dim"))
        if any(s.ongoing for s in group):
            lines.append(indent + paint("still stuck here when this report was made", "red"))
        lines.append(indent + paint(f"fix: {worst.fix_hint}", "green"))
        return lines
