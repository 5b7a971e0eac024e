"""Log stalls to the ``unstall`` logger, rate-limited so a sick service cannot flood it.

At most ``LIMIT`` lines per ``WINDOW_S`` seconds, process-wide; the next line after a
quiet spell says how many were suppressed.
"""

from __future__ import annotations

import logging
import threading
import time

from unstall._report.records import Stall

__all__ = ["LIMIT", "WINDOW_S", "log_hang", "log_stall"]

LIMIT = 10
WINDOW_S = 60.0

_log = logging.getLogger("unstall")
_lock = threading.Lock()
_window_start = 0.0
_count = 0
_suppressed = 0


def _admit() -> int | None:
    """``None`` to drop this line, else how many lines were dropped before it."""
    global _window_start, _count, _suppressed
    with _lock:
        now = time.monotonic()
        if now - _window_start >= WINDOW_S:
            _window_start, _count = now, 0
        if _count >= LIMIT:
            _suppressed += 1
            return None
        _count += 1
        dropped, _suppressed = _suppressed, 0
        return dropped


def _where(stall: Stall) -> str:
    if stall.culprit is None:
        return "unknown code"
    text = f"{stall.culprit.location} in {stall.culprit.function}"
    if stall.call:
        text += f" ({stall.call})"
    return text


def _running(stall: Stall) -> str:
    if stall.task is not None:
        return f"task {stall.task} ({stall.coro})"
    return f"callback {stall.callback}" if stall.callback else "a callback"


def log_stall(stall: Stall) -> None:
    """One WARNING line for a finished stall."""
    if not _log.isEnabledFor(logging.WARNING):
        return
    dropped = _admit()
    if dropped is None:
        return
    suffix = f" [{dropped} more stall lines suppressed]" if dropped else ""
    _log.warning(
        "event loop blocked for %.3fs at %s, in %s, thread %s%s",
        stall.duration_s,
        _where(stall),
        _running(stall),
        stall.thread,
        suffix,
    )


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
    dropped = _admit()
    if dropped is None:
        return
    _log.warning(
        "event loop stuck for %.1fs so far at %s, in %s, thread %s",
        stall.duration_s,
        _where(stall),
        _running(stall),
        stall.thread,
    )
