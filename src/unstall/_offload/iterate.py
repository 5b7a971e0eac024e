"""``unstall.iterate``: consume a blocking iterator from async code, a batch per handoff.

The iterator is created, advanced and closed in a worker thread; the loop receives a list
of items per handoff and yields them one by one. A batch ends when it holds ``batch``
items or when collecting it took longer than :data:`MAX_BATCH_WAIT_S`, so a slow source
(a paginated API, a network cursor) still streams its first items promptly.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import types
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

from unstall._offload.thread_pool import ThreadPool, default_thread_pool
from unstall._util import validate_positive_int

__all__ = ["MAX_BATCH_WAIT_S", "iterate"]

T = TypeVar("T")

MAX_BATCH_WAIT_S = 0.05
"""A batch is handed over once collecting it took this long, even if not full."""


class _Source(Generic[T]):
    """The blocking side, only ever touched by worker threads (one at a time)."""

    def __init__(self, iterable: Iterable[T], batch: int) -> None:
        self._iterable = iterable
        self._iterator: Iterator[T] | None = None
        self._batch = batch
        self._lock = threading.Lock()  # a close waits for a fetch still running
        self._closed = False

    def fetch(self) -> tuple[list[T], BaseException | None, bool]:
        """Up to one batch: ``(items, error raised after them, exhausted)``."""
        items: list[T] = []
        with self._lock:
            if self._closed:
                return items, None, True
            try:
                if self._iterator is None:
                    self._iterator = iter(self._iterable)
                deadline = time.monotonic() + MAX_BATCH_WAIT_S
                nxt = self._iterator.__next__
                for _ in range(self._batch):
                    items.append(nxt())
                    if time.monotonic() > deadline:
                        break
            except StopIteration:
                return items, None, True
            except BaseException as exc:
                return items, exc, True
            return items, None, False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            iterator, self._iterator = self._iterator, None
            # Close what we own (a generator, an iterator iter() made); leave an object
            # that is its own iterator (a file, a DB cursor) to its owner.
            owned = isinstance(iterator, types.GeneratorType) or iterator is not self._iterable
            close = getattr(iterator, "close", None)
            if owned and close is not None:
                close()


class BlockingIterator(AsyncIterator[T]):
    """What :func:`iterate` returns: an async iterator, also an async context manager."""

    def __init__(self, iterable: Iterable[T], batch: int, pool: ThreadPool) -> None:
        self._source = _Source(iterable, batch)
        self._pool = pool
        self._buffer: list[T] = []
        self._index = 0
        self._error: BaseException | None = None
        self._exhausted = False
        self._closed = False

    def __aiter__(self) -> BlockingIterator[T]:
        return self

    async def __anext__(self) -> T:
        while self._index >= len(self._buffer):
            if self._error is not None:
                error, self._error = self._error, None
                self._closed = True  # the source is finished: nothing left to close
                raise error
            if self._exhausted or self._closed:
                self._closed = True
                raise StopAsyncIteration
            try:
                self._buffer, self._error, self._exhausted = await self._pool.submit(
                    self._source.fetch, (), {}
                )
            except asyncio.CancelledError:
                # The batch being fetched is lost: close now (after that batch finishes)
                # rather than leave a half-read iterator to the garbage collector.
                self._close_in_background()
                raise
            self._index = 0
        item = self._buffer[self._index]
        self._index += 1
        return item

    async def aclose(self) -> None:
        """Close the underlying iterator (in a worker thread) and stop iterating.

        If a batch is still being fetched for a cancelled caller, the close runs after it.
        """
        if self._closed:
            return
        self._closed = True
        self._buffer = []
        await self._pool.submit(self._source.close, (), {}, cancel="wait")

    async def __aenter__(self) -> BlockingIterator[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _close_in_background(self) -> None:
        self._closed = True
        self._buffer = []
        # A shut-down pool raises RuntimeError: nothing can close it then.
        with contextlib.suppress(RuntimeError):
            self._pool.spawn_detached(self._source.close)

    def __del__(self) -> None:
        # Broke out of ``async for`` without aclose(): close in the background.
        if not getattr(self, "_closed", True):
            self._close_in_background()


def iterate(
    iterable: Iterable[T], *, batch: int = 64, on: ThreadPool | None = None
) -> BlockingIterator[T]:
    """Iterate a blocking iterable from async code, fetching items in a worker thread.

    ``async for row in unstall.iterate(cursor):`` drains the iterator in batches of up to
    ``batch`` items, so the loop pays one thread handoff per batch, not per item.

    Args:
        iterable: any sync iterable (a file, a generator over a paginated API, a DB cursor);
            ``iter()`` is also called in the worker.
        batch: the most items fetched per handoff (an int >= 1).
        on: the :class:`~unstall.ThreadPool` to use (default: the shared pool). Use a
            one-thread pool for objects bound to one thread (a ``sqlite3`` cursor).

    Raises:
        TypeError: ``iterable`` is not iterable (an async iterable: use ``async for``
            directly), ``batch`` is not an int, ``on`` is not a ThreadPool.
        ValueError: ``batch`` < 1.

    The iterator's own exceptions are raised from ``__anext__`` after the items fetched
    before them. Breaking out of the loop, ``aclose()``, ``async with`` exit or a
    cancellation close the underlying iterator in a worker thread, after any batch still
    being fetched: a generator (or an iterator ``iter()`` created) is closed; an object
    that is its own iterator, such as a file or a DB cursor, is left open for its owner.
    """
    if hasattr(iterable, "__aiter__") and not hasattr(iterable, "__iter__"):
        raise TypeError(f"{type(iterable).__name__!r} is an async iterable: use async for directly")
    candidate: object = iterable
    if not (isinstance(candidate, Iterable) or hasattr(candidate, "__getitem__")):
        raise TypeError(f"iterate() needs an iterable, got {type(iterable).__name__!r}")
    validate_positive_int(batch, "batch")
    if on is not None and not isinstance(on, ThreadPool):
        raise TypeError(f"on must be a unstall.ThreadPool or None, got {on!r}")
    return BlockingIterator(iterable, batch, on or default_thread_pool())
