"""A capacity limit shared by calls on any event loop, in any thread.

``asyncio.Semaphore`` belongs to one loop. A :class:`Limiter` is guarded by a
``threading.Lock`` instead, and each waiter carries its own loop: a token released on
another thread reaches the waiter through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from dataclasses import dataclass

from unstall._util import validate_positive_int

_WAITING, _GRANTED, _SKIPPED = 0, 1, 2


class _Waiter:
    __slots__ = ("fut", "loop", "state")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()
        self.state = _WAITING


@dataclass(frozen=True)
class LimiterStatistics:
    """A snapshot of a :class:`Limiter`."""

    total_tokens: int
    borrowed_tokens: int
    tasks_waiting: int


_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()


class Limiter:
    """At most ``total_tokens`` calls at a time, across every function and loop using it.

    Use it as ``async with limiter:`` or pass it as ``offload(limit=limiter)``; several
    functions sharing one limiter share its capacity, even when they run on different event
    loops in different threads. Waiters are served first come, first served.

    Args:
        total_tokens: the capacity, an int >= 1 (settable later via :attr:`total_tokens`).

    Raises:
        TypeError: ``total_tokens`` is not an int.
        ValueError: ``total_tokens`` is less than 1.

    Cancellation: a task cancelled while waiting for a token leaves the queue without
    taking one; if a token was handed to it at the same moment, it is passed on to the
    next waiter, never lost.
    """

    def __init__(self, total_tokens: int) -> None:
        self._total = validate_positive_int(total_tokens, "total_tokens")
        self._lock = threading.Lock()
        self._borrowed = 0
        self._waiters: deque[_Waiter] = deque()
        _limiters.add(self)

    @property
    def total_tokens(self) -> int:
        """The capacity. Raising it wakes waiters; lowering it lets running calls finish."""
        return self._total

    @total_tokens.setter
    def total_tokens(self, value: int) -> None:
        value = validate_positive_int(value, "total_tokens")
        with self._lock:
            self._total = value
            granted = self._grant_locked()
        self._wake(granted)

    @property
    def borrowed_tokens(self) -> int:
        """Tokens held right now."""
        return self._borrowed

    @property
    def available_tokens(self) -> int:
        """Tokens that could be taken right now without waiting."""
        return max(0, self._total - self._borrowed)

    def statistics(self) -> LimiterStatistics:
        """Capacity, tokens held and tasks waiting, read together."""
        with self._lock:
            return LimiterStatistics(self._total, self._borrowed, len(self._waiters))

    def __repr__(self) -> str:
        return f"<Limiter borrowed={self._borrowed}/{self._total} waiting={len(self._waiters)}>"

    async def acquire(self) -> None:
        """Wait for a token and take it (first come, first served).

        Raises:
            asyncio.CancelledError: when cancelled while waiting; no token is kept.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._borrowed < self._total:
                self._borrowed += 1
                return
            waiter = _Waiter(loop)
            self._waiters.append(waiter)
        try:
            await waiter.fut
        except BaseException:
            with self._lock:
                if waiter.state == _WAITING:
                    self._waiters.remove(waiter)
                granted = waiter.state == _GRANTED
            if granted:  # a token arrived as we were cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        """Give a token back (from any thread); wakes the next waiter.

        Raises:
            RuntimeError: if no token is borrowed.
        """
        with self._lock:
            if self._borrowed <= 0:
                raise RuntimeError("Limiter.release() called more times than acquire()")
            self._borrowed -= 1
            granted = self._grant_locked()
        self._wake(granted)

    def _grant_locked(self) -> list[_Waiter]:
        granted = []
        while self._waiters and self._borrowed < self._total:
            waiter = self._waiters.popleft()
            if waiter.fut.cancelled():  # its task is leaving: it must not count on a token
                waiter.state = _SKIPPED
                continue
            waiter.state = _GRANTED
            self._borrowed += 1
            granted.append(waiter)
        return granted

    def _wake(self, granted: list[_Waiter]) -> None:
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for waiter in granted:
            if waiter.loop is here:
                _set_if_pending(waiter.fut)
                continue
            try:
                waiter.loop.call_soon_threadsafe(_set_if_pending, waiter.fut)
            except RuntimeError:  # its loop is closed: nobody will use the token
                self.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    # If the waiter was cancelled meanwhile, its except-branch returns the token.
    if not fut.done():
        fut.set_result(None)


def _reset_after_fork() -> None:
    for limiter in list(_limiters):
        limiter._lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
