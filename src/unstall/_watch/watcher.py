"""``unstall.watch()``: find what stalls an event loop, with no change to the code it runs."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from unstall._offload.capacity import wait_marks, wait_notes
from unstall._report.format import format_duration
from unstall._report.incidents import contain, notes_since
from unstall._report.records import Aggregate, LoopInfo, Report, Stall
from unstall._util import _is_async_callable
from unstall._watch import context as _context
from unstall._watch.stall_log import LIMIT, StallLog, log_hang
from unstall._watch.watchdog import Subscription, monitor

__all__ = ["Watcher", "watch"]

_log = logging.getLogger("unstall")
_MAX_AGGREGATES = 1000
ContextArg = _context.ContextProvider | Iterable[_context.ContextProvider] | None


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
        *,
        context: tuple[_context.ContextProvider, ...] = (),
        max_records: int = 10_000,
        max_log_per_minute: int = LIMIT,
        on_loop: Callable[[LoopInfo], None] | None = None,
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.stalls: list[Stall] = []
        self.starved: list[Stall] = []
        self.max_records = max_records
        self._aggregated: dict[tuple[str, int] | None, Aggregate] = {}
        self._on_stall = on_stall
        self._on_hang = on_hang
        self._log = StallLog(max_log_per_minute) if log else None
        self._providers = context
        self._started_at = time.time()
        self._t0 = time.monotonic()
        self._pool_marks = wait_marks()  # a full offload pool is noted in the report
        self._stopped_t: float | None = None
        self._lock = threading.Lock()
        self._loops: list[LoopInfo] = []
        self._subscription = Subscription(
            loop, threshold, self._t0, self._take_stall, self._take_starved, self._take_hang
        )
        self._subscription.on_loop = on_loop  # unstall run's children record their loops

    def _start(self) -> Watcher:
        try:
            _context.register(self._providers)
            monitor.add(self._subscription)
        except Exception as exc:
            contain("the watcher's start", "watching did not start", exc)
            self._give_up()
        return self

    def _give_up(self) -> None:
        """After an internal error: release what was taken; the watcher is stopped."""
        try:
            monitor.remove(self._subscription)
            _context.unregister(self._providers)
        except Exception as exc:
            contain("the watcher's stop", "the watcher may not have let go of a loop", exc)
        with self._lock:
            if self._stopped_t is None:
                self._stopped_t = time.monotonic()

    # -- handed to the watchdog -----------------------------------------------------------

    def _take_stall(self, stall: Stall) -> None:
        stall = self._subscription.relative(stall)
        with self._lock:
            if len(self.stalls) < self.max_records:
                self.stalls.append(stall)
            else:
                self._aggregate(stall)
        if self._log is not None:
            self._log.stall(stall)
        _notify(self._on_stall, "on_stall", stall)

    def _aggregate(self, stall: Stall) -> None:
        """Count a stall past ``max_records`` in its culprit line's aggregate."""
        culprit = stall.culprit
        key = None if culprit is None else (culprit.file, culprit.line)
        found = self._aggregated.get(key)
        if found is None:
            if len(self._aggregated) >= _MAX_AGGREGATES:
                key, culprit = None, None  # past that many lines: one "elsewhere" bucket
                found = self._aggregated.get(None)
            if found is None:
                found = self._aggregated[key] = Aggregate(culprit)
        found.add(stall.duration_s)

    def _take_starved(self, stall: Stall) -> None:
        stall = self._subscription.relative(stall)
        with self._lock:
            self.starved.append(stall)
        _log.debug(
            "unstall: loop %s was late %s %s, not by its own code",
            stall.loop,
            format_duration(stall.duration_s),
            stall.call,
        )

    def _take_hang(self, stall: Stall) -> None:
        stall = self._subscription.relative(stall)
        if self._log is not None:
            log_hang(stall)
        _notify(self._on_hang, "on_hang", stall)

    # -- public ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop watching: report stalls already finished, then release the loop(s).

        Idempotent. A stall still going on in the calling thread's loop (the callback
        calling ``stop()`` has blocked for longer than the threshold) is closed and
        reported. One still going on in a loop of another thread is reported as it
        stands, with ``ongoing=True`` (that loop's own end of it would come too late).
        Once it returns, no more stalls reach this watcher.
        """
        with self._lock:
            if self._stopped_t is not None:
                return
        self._snapshot_loops()
        try:
            monitor.remove(self._subscription)
        except Exception as exc:
            contain("the watcher's stop", "stalls of the last moments may be missing", exc)
        finally:
            with self._lock:
                self._stopped_t = time.monotonic()
            try:
                _context.unregister(self._providers)
                if self._log is not None:
                    self._log.flush()
            except Exception as exc:
                contain("the watcher's stop", "a log line may be missing", exc)

    def pause(self) -> None:
        """Stop reporting stalls until :meth:`resume`; what was found stays.

        The watchdog keeps timing the loop meanwhile, so a stall that began while paused
        and ends after ``resume()`` is reported.
        """
        self._subscription.paused = True

    def resume(self) -> None:
        """Report stalls again after :meth:`pause`."""
        self._subscription.paused = False

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` is in effect."""
        return self._subscription.paused

    @property
    def running(self) -> bool:
        """Whether the watcher is still watching."""
        return self._stopped_t is None

    def _snapshot_loops(self) -> None:
        try:
            self._loops = monitor.loops_for(self._subscription)
        except Exception as exc:
            contain("the watcher's report", "the loops' lag is missing", exc)

    def report(self) -> Report:
        """Everything seen so far: the stalls, each loop's lag over time, and notes on what
        unstall failed to watch (its own errors, which never reach the watched code)."""
        if self._stopped_t is None:
            self._snapshot_loops()
        end = self._stopped_t if self._stopped_t is not None else time.monotonic()
        with self._lock:
            stalls = list(self.stalls)
            aggregated = [
                Aggregate(a.culprit, a.count, a.total_s, a.worst_s)
                for a in self._aggregated.values()
                if a.count > 0
            ]
        return Report(
            aggregated=aggregated,
            threshold_s=self.threshold,
            stalls=stalls,
            loops=list(self._loops),
            started_at=self._started_at,
            duration_s=end - self._t0,
            notes=[*wait_notes(self._pool_marks), *notes_since(self._t0, self._stopped_t)],
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
    context: ContextArg = None,
    max_records: int = 10_000,
    max_log_per_minute: int = LIMIT,
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
        log: Log each stall to the ``unstall`` logger (WARNING). The same culprit line
            stalling again within a minute is logged once, then once more with a count.
        context: A callable, or a list of callables, returning a dict added to each
            stall's ``context``. Each is called with no argument, from the watchdog
            thread, inside a copy of the blocked task's context variables (so a
            ``ContextVar.get()`` returns the task's value). One that raises or returns
            something else is logged once and skipped from then on.
        max_records: Keep at most this many :class:`Stall` records; further stalls are
            only counted, per culprit line, in ``Report.aggregated`` (bounded memory
            for a watcher that runs for days).
        max_log_per_minute: At most this many log lines a minute; the next line says
            how many were dropped.

    Returns:
        The running :class:`Watcher`. unstall's own failures never reach the caller nor the
        watched loops: they are logged to the ``unstall`` logger and listed in
        :attr:`Report.notes` (a watcher that could not start is returned stopped).

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
    providers = _check_context(context)
    for name, value in (("max_records", max_records), ("max_log_per_minute", max_log_per_minute)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad_count(name, value)
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
    return Watcher(
        loop,
        float(threshold),
        on_stall,
        on_hang,
        bool(log),
        context=providers,
        max_records=max_records,
        max_log_per_minute=max_log_per_minute,
    )._start()


def _bad_count(name: str, value: object) -> Exception:
    if isinstance(value, int) and not isinstance(value, bool):
        return ValueError(f"watch(): {name} must be at least 1, got {value!r}")
    return TypeError(f"watch(): {name} must be an int, not {type(value).__name__}")


def _check_context(context: ContextArg) -> tuple[_context.ContextProvider, ...]:
    if context is None:
        return ()
    providers: object = (context,) if callable(context) else context
    if isinstance(providers, str | bytes) or not isinstance(providers, Iterable):
        raise TypeError(
            f"watch(): context must be a callable or a list of callables, "
            f"not {type(context).__name__}"
        )
    found = tuple(providers)
    for fn in found:
        if not callable(fn) or _is_async_callable(fn):
            raise TypeError(
                f"watch(): each context provider must be a plain function returning a dict, "
                f"not {fn!r}"
            )
    return found
