"""Garbage collections seen from ``gc.callbacks``: when, on which thread, how much.

A collection holds the GIL from start to end: no other thread runs, the watchdog
included, so without this a long collection is blamed on whatever line the loop was at
when the watchdog got the GIL back. The callback records each collection of a watched
thread (start, end, generation, objects freed); a long one also records the thread's own
stack at that moment, the line whose allocation triggered it (or the ``gc.collect()``).

The callback is cheap (two dictionary operations and a clock read per collection) and
installed only while a watcher runs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from unstall._watch import witness
from unstall._watch.checkpoint import locate
from unstall._watch.sampler import capture_own, never_sample_in

__all__ = ["Collection", "install", "overlapping", "uninstall", "watch_thread"]

_log = logging.getLogger("unstall")
_monotonic = time.monotonic
_get_ident = threading.get_ident


@dataclass(frozen=True, slots=True)
class Collection:
    """One garbage collection on one thread, in monotonic seconds."""

    thread_id: int
    start: float
    end: float
    generation: int
    collected: int


_started: dict[int, float] = {}
_done: deque[Collection] = deque(maxlen=1024)
_watched: dict[int, float] = {}
"""Thread ids of watched loops -> the shortest collection worth a stack sample there."""
_installed = False
_NOTE_S = 0.001


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    try:
        _record(phase, info)
    except Exception:  # runs inside the program's allocations: never raise into them
        _log.debug("unstall: garbage-collection callback failed", exc_info=True)


# Reading the culprit's source may release the GIL: a watchdog sample taken then would put
# this callback on the program's stack. The callback takes its own sample instead.
never_sample_in(_on_gc)


def _record(phase: str, info: dict[str, Any]) -> None:
    ident = _get_ident()
    if ident not in _watched:
        return
    if phase == "start":
        _started[ident] = _monotonic()
        return
    began = _started.pop(ident, None)
    if began is None:
        return
    now = _monotonic()
    if now - began < _NOTE_S:
        return
    _done.append(Collection(ident, began, now, info["generation"], info["collected"]))
    if now - began >= _watched[ident]:
        # The frame that triggered the collection: the caller of ``_on_gc``, which calls us.
        frame = sys._getframe(2)
        # Since 3.12 a collection runs at the next check after the allocation, which may
        # be the start of the ``__init__`` the allocating line called: the line is there.
        taken = capture_own(frame, began, "gc", locate(frame, allocation=True))
        if taken is not None:
            witness.push(ident, taken)


def watch_thread(thread_id: int, sample_from: float | None) -> None:
    """Record collections on ``thread_id`` (``None``: stop); stacks for those that long."""
    if sample_from is None:
        _watched.pop(thread_id, None)
    else:
        _watched[thread_id] = sample_from


def install() -> None:
    global _installed
    if not _installed:
        gc.callbacks.append(_on_gc)
        _installed = True


def uninstall() -> None:
    global _installed
    if _installed:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(_on_gc)
        _installed = False
        _watched.clear()


def overlapping(thread_id: int, start: float, end: float) -> list[tuple[float, Collection]]:
    """Collections on ``thread_id`` overlapping ``[start, end]``, each with the overlap."""
    found = []
    for c in list(_done):
        if c.thread_id == thread_id and c.end > start and c.start < end:
            found.append((min(c.end, end) - max(c.start, start), c))
    return found
