"""Results coming back to an event loop from worker threads, one wake-up per burst.

``asyncio.to_thread`` pays one ``call_soon_threadsafe`` (a self-pipe write and a loop
wake-up) per finished call. Here a worker appends its outcome to the loop's inbox and
schedules a drain only when the inbox was empty, so a burst of N results costs one
wake-up; the drain then settles every result in one loop iteration.

A closed loop cannot be woken: its results are dropped quietly (nobody is left to take
them), instead of the "Event loop is closed" traceback executors print.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from typing import Any, Protocol


class Settleable(Protocol):
    def settle(self, ok: bool, value: Any) -> None:
        """On the loop: deliver the outcome."""

    def drop(self, ok: bool, value: Any) -> None:
        """On any thread: the loop is gone, nobody can take the outcome."""


class Inbox:
    """The pending results of one event loop."""

    __slots__ = ("__weakref__", "_pending", "_scheduled", "loop_ref")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the registry maps loop -> inbox weakly, a strong ref back would pin the loop.
        self.loop_ref = weakref.ref(loop)
        self._pending: deque[tuple[Settleable, bool, Any]] = deque()
        # A drain is scheduled and has not started yet. No lock: a worker appends its outcome
        # before it reads the flag, and the drain clears the flag before it empties the
        # deque, so an outcome is either seen by a drain already scheduled or schedules one
        # (at worst two workers both schedule one; the second drain finds nothing).
        self._scheduled = False

    def deliver(self, job: Settleable, ok: bool, value: Any) -> None:
        """Called by a worker thread: hand ``job``'s outcome to the loop."""
        loop = self.loop_ref()
        if loop is None:  # the loop is gone, and everyone who waited on it
            job.drop(ok, value)
            return
        self._pending.append((job, ok, value))
        if self._scheduled:
            # The scheduled drain takes this outcome, unless the loop closed before it ran.
            if loop.is_closed():
                self._drop_pending()
            return
        self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed
            self._drop_pending()

    def drop_if_closed(self) -> None:
        """Drop the outcomes waiting for a loop that closed before draining them.

        A worker can deliver after the loop's last iteration but before ``close()``: the
        scheduled drain then never runs. Those outcomes hold their futures, the futures
        hold the loop, and the registry holds this inbox, so the closed loop would never
        be freed.
        """
        loop = self.loop_ref()
        if loop is not None and loop.is_closed():
            self._drop_pending()

    def _drop_pending(self) -> None:
        pending = self._pending
        while pending:
            try:
                job, ok, value = pending.popleft()
            except IndexError:  # another thread dropped it first
                return
            job.drop(ok, value)

    def _drain(self) -> None:
        self._scheduled = False
        pending = self._pending
        # Only the loop's thread takes from the deque while the loop runs, so the check
        # holds; it spares raising IndexError at the end of every drain.
        while pending:
            job, ok, value = pending.popleft()
            job.settle(ok, value)


_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Inbox] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()
_last: Inbox | None = None


def inbox_for(loop: asyncio.AbstractEventLoop) -> Inbox:
    """The inbox of ``loop`` (created on first use, dropped with the loop)."""
    global _last
    last = _last
    if last is not None and last.loop_ref() is loop:
        return last
    with _registry_lock:
        inbox = _registry.get(loop)
        if inbox is None:
            for other in list(_registry.values()):  # a new loop: a good time to sweep
                other.drop_if_closed()
            inbox = _registry[loop] = Inbox(loop)
    _last = inbox
    return inbox


def _reset_after_fork() -> None:
    # The parent's loops and locks mean nothing in the child: start clean.
    global _registry, _registry_lock, _last
    _registry = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()
    _last = None


os.register_at_fork(after_in_child=_reset_after_fork)
