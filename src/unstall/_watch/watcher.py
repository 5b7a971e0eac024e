"""``unstall.watch()``: find what stalls an event loop, with no change to the code it runs."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from types import TracebackType

from unstall._report.records import LoopInfo, Report, Stall
from unstall._util import _is_async_callable
from unstall._watch.stall_log import log_hang, log_stall
from unstall._watch.watchdog import Subscription, monitor

__all__ = ["Watcher", "watch"]

_log = logging.getLogger("unstall")


def _notify(listener: Callable[[Stall], object] | None, name: str, stall: Stall) -> None:
    if listener is None:
        return
    try:
        listener(stall)
    except BaseException:  # also SystemExit: a listener must not end the watchdog
        _log.exception("unstall: %s callback %r failed", name, listener)


class Watcher:
    """A running watch over one loop, or over every loop; made by :func:`watch`.

    Attributes:
        stalls: Finished stalls, in the order they ended.
        starved: Long loop iterations that were not the loop's own doing: its thread was
            kept from running by the OS (``call == "(waiting for a CPU)"``) or by another
            thread holding the GIL (``"(waiting for the GIL)"``). Not in ``stalls``, not
            logged, not passed to ``on_stall``.
        threshold: The shortest blocking time reported, in seconds.
        loop: The watched loop, or ``None`` for every loop in the process.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        threshold: float,
        on_stall: Callable[[Stall], object] | None,
        on_hang: Callable[[Stall], object] | None,
        log: bool,
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.stalls: list[Stall] = []
        self.starved: list[Stall] = []
        self._on_stall = on_stall
        self._on_hang = on_hang
        self._log = log
        self._started_at = time.time()
        self._t0 = time.monotonic()
        self._stopped_t: float | None = None
        self._lock = threading.Lock()
        self._loops: list[LoopInfo] = []
        self._subscription = Subscription(
            loop, threshold, self._t0, self._take_stall, self._take_starved, self._take_hang
        )

    def _start(self) -> Watcher:
        monitor.add(self._subscription)
        return self

    # -- handed to the watchdog -----------------------------------------------------------

    def _take_stall(self, stall: Stall) -> None:
        stall = self._subscription.relative(stall)
        with self._lock:
            self.stalls.append(stall)
        if self._log:
            log_stall(stall)
        _notify(self._on_stall, "on_stall", stall)

    def _take_starved(self, stall: Stall) -> None:
        stall = self._subscription.relative(stall)
        with self._lock:
            self.starved.append(stall)
        _log.debug(
            "unstall: loop %s was late %.0f ms %s, not by its own code",
            stall.loop,
            stall.duration_s * 1e3,
            stall.call,
        )

    def _take_hang(self, stall: Stall) -> None:
        stall = self._subscription.relative(stall)
        if self._log:
            log_hang(stall)
        _notify(self._on_hang, "on_hang", stall)

    # -- public ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop watching: report stalls already finished, then release the loop(s).

        Idempotent. A stall still going on in the calling thread's loop (the callback
        calling ``stop()`` has blocked for longer than the threshold) is closed and
        reported. Joins the watchdog thread when no other watcher remains.
        """
        with self._lock:
            if self._stopped_t is not None:
                return
        try:
            self._snapshot_loops()
        finally:
            try:
                monitor.remove(self._subscription)
            finally:
                with self._lock:
                    self._stopped_t = time.monotonic()

    @property
    def running(self) -> bool:
        """Whether the watcher is still watching."""
        return self._stopped_t is None

    def _snapshot_loops(self) -> None:
        self._loops = monitor.loops_for(self._subscription)

    def report(self) -> Report:
        """Everything seen so far: the stalls, and each loop's lag over time."""
        if self._stopped_t is None:
            self._snapshot_loops()
        end = self._stopped_t if self._stopped_t is not None else time.monotonic()
        with self._lock:
            stalls = list(self.stalls)
        return Report(
            threshold_s=self.threshold,
            stalls=stalls,
            loops=list(self._loops),
            started_at=self._started_at,
            duration_s=end - self._t0,
        )

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Watcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        what = "every loop" if self.loop is None else repr(self.loop)
        state = "running" if self.running else "stopped"
        return f"<Watcher {state} threshold={self.threshold}s on {what}: {len(self.stalls)} stalls>"


def watch(
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    threshold: float = 0.1,
    on_stall: Callable[[Stall], object] | None = None,
    on_hang: Callable[[Stall], object] | None = None,
    log: bool = True,
) -> Watcher:
    """Start watching for stalls: callbacks that keep an event loop busy too long.

    Inside a coroutine, with no ``loop``, it watches the running loop. Outside any running
    loop, it watches every asyncio loop (asyncio, uvloop, anyio's asyncio backend) that is
    running or starts later, in any thread, until :meth:`Watcher.stop`. Use it as
    ``async with unstall.watch() as w:``, ``with unstall.watch(loop) as w:`` or
    ``w = unstall.watch(); ...; w.stop()``.

    Args:
        loop: The loop to watch; ``None`` for the running loop, or every loop.
        threshold: Report callbacks that ran at least this long, in seconds (> 0).
        on_stall: Called with each finished :class:`Stall`, from the watchdog thread
            (or from the thread calling ``stop()`` for stalls it closes). An exception
            it raises is logged to the ``unstall`` logger; watching goes on.
        on_hang: Called with ``ongoing=True`` records while a stall lasts: when it
            passes the threshold, then about every second, with the stack at that time.
        log: Log each stall to the ``unstall`` logger (WARNING, rate-limited).

    Returns:
        The running :class:`Watcher`.

    Raises:
        TypeError: ``loop`` is not an event loop, ``threshold`` not a number, or a
            callback not callable or an ``async def`` (it would never be awaited).
        ValueError: ``threshold`` is not a positive finite number.
    """
    if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"watch(): loop must be an asyncio event loop, not {type(loop).__name__}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise TypeError(
            f"watch(): threshold must be a number of seconds, not {type(threshold).__name__}"
        )
    if not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(
            f"watch(): threshold must be a positive number of seconds, got {threshold!r}"
        )
    for name, fn in (("on_stall", on_stall), ("on_hang", on_hang)):
        if fn is not None and not callable(fn):
            raise TypeError(f"watch(): {name} must be callable, not {type(fn).__name__}")
        if fn is not None and _is_async_callable(fn):
            raise TypeError(
                f"watch(): {name} must be a plain function, not an async one: it is called "
                "from the watchdog thread, not awaited"
            )
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    return Watcher(loop, float(threshold), on_stall, on_hang, bool(log))._start()
