"""Log stalls to the ``unstall`` logger without flooding it.

Each watcher has a :class:`StallLog`. The same culprit line stalling again within
``repeat_window_s`` (a minute by default) is logged once; the repeats are counted and
written as one line when the window has passed and the line stalls again, or when the
watcher stops ("... stalled 57 more times at app.py:42 in the last 60 s"). On top of that,
at most ``max_per_minute`` lines are written a minute; the next line after a quiet spell
says how many were dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from unstall._report.format import format_duration
from unstall._report.records import Stall

__all__ = ["LIMIT", "WINDOW_S", "StallLog", "log_hang"]

LIMIT = 10
"""Default for ``watch(max_log_per_minute=...)``."""
WINDOW_S = 60.0
_MAX_KEYS = 1000

_log = logging.getLogger("unstall")


@dataclass(slots=True)
class _Repeats:
    since: float
    count: int = 0
    worst_s: float = 0.0
    where: str = ""


def _where(stall: Stall) -> str:
    if stall.culprit is None:
        return "unknown code"
    text = f"{stall.culprit.location} in {stall.culprit.function}"
    if stall.call:
        text += f" ({stall.call})"
    return text


def _running(stall: Stall) -> str:
    if stall.task is not None:
        text = f"task {stall.task} ({stall.coro})"
    else:
        text = f"callback {stall.callback}" if stall.callback else "a callback"
    route = stall.context.get("http.route")
    if route:
        text += f", request {stall.context.get('http.method', '')} {route}".rstrip()
    trace = stall.context.get("trace_id")
    if trace:
        text += f", trace {trace}"
    return text


def _key(stall: Stall) -> tuple[str, int | str]:
    if stall.culprit is None:
        return ("?", stall.loop)
    return (stall.culprit.file, stall.culprit.line)


class StallLog:
    """The log lines of one watcher: repeats folded, lines per minute capped."""

    def __init__(self, max_per_minute: int = LIMIT, repeat_window_s: float = WINDOW_S) -> None:
        self.max_per_minute = max_per_minute
        self.repeat_window_s = repeat_window_s
        self._lock = threading.Lock()
        self._repeats: OrderedDict[tuple[str, int | str], _Repeats] = OrderedDict()
        self._minute_start = 0.0
        self._lines = 0
        self._dropped = 0

    def stall(self, stall: Stall) -> None:
        """Log a finished stall, or count it as a repeat of its culprit line."""
        if not _log.isEnabledFor(logging.WARNING):
            return
        now = time.monotonic()
        key = _key(stall)
        with self._lock:
            seen = self._repeats.get(key)
            if seen is not None and now - seen.since < self.repeat_window_s:
                seen.count += 1
                seen.worst_s = max(seen.worst_s, stall.duration_s)
                return
            self._repeats[key] = _Repeats(now, where=_where(stall))
            if len(self._repeats) > _MAX_KEYS:
                self._repeats.popitem(last=False)
        if seen is not None and seen.count:
            self._write_repeats(seen, now)
        self._write(
            "event loop blocked for %s at %s, in %s, thread %s; fix: %s",
            format_duration(stall.duration_s),
            _where(stall),
            _running(stall),
            stall.thread,
            stall.fix.text,
        )

    def flush(self) -> None:
        """Write the repeats not yet written (the watcher stops)."""
        now = time.monotonic()
        with self._lock:
            pending = [r for r in self._repeats.values() if r.count]
            self._repeats.clear()
        for repeats in pending:
            self._write_repeats(repeats, now)

    def _write_repeats(self, repeats: _Repeats, now: float) -> None:
        self._write(
            "event loop stalled %d more times at %s in the last %.0f s (worst %s)",
            repeats.count,
            repeats.where,
            max(now - repeats.since, 1.0),
            format_duration(repeats.worst_s),
        )

    def _write(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._minute_start >= 60.0:
                self._minute_start, self._lines = now, 0
            if self._lines >= self.max_per_minute:
                self._dropped += 1
                return
            self._lines += 1
            dropped, self._dropped = self._dropped, 0
        if dropped:
            message += f" [{dropped} more stall lines dropped]"
        _log.warning(message, *args)


_hang_logged: dict[tuple[str, float], float] = {}


def log_hang(stall: Stall) -> None:
    """A WARNING line for a stall still going on: once it passes 1 s, then at 2, 4, 8 s..."""
    if stall.duration_s < 1.0 or not _log.isEnabledFor(logging.WARNING):
        return
    key = (stall.loop, round(stall.start_s, 3))
    last = _hang_logged.get(key, 0.0)
    if last and stall.duration_s < 2 * last:
        return
    if len(_hang_logged) > 1000:
        _hang_logged.clear()
    _hang_logged[key] = stall.duration_s
    _log.warning(
        "event loop stuck for %s so far at %s, in %s, thread %s",
        format_duration(stall.duration_s),
        _where(stall),
        _running(stall),
        stall.thread,
    )
