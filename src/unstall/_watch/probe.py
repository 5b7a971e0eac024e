"""The loop side of watching: timestamps taken by the loop thread itself.

On asyncio's selector loops the probe wraps ``loop._selector.select``: the time between
``select`` returning and being called again is exactly one loop iteration (the callbacks
it ran), so a stall's start and end are exact. One wrapper call per iteration, not per
callback, keeps the cost low. Loops without a Python selector (uvloop, proactor) fall back
on the heartbeat: a callback rescheduled every few milliseconds whose lateness bounds the
stall (within half a heartbeat interval).

The heartbeat also runs on selector loops, less often, to measure the loop's lag for
``LoopInfo.lag`` and the metrics feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any

from unstall._report import feed
from unstall._report.incidents import contain
from unstall._report.records import LoopInfo
from unstall._watch.threadclock import ThreadClock

__all__ = ["LoopProbe", "Reading", "describe_loop"]

_monotonic = time.monotonic
_process_time = time.process_time
_LAG_BUCKET_S = 0.1
_LAG_MAX_POINTS = 20_000
_EXACT_BEAT_S = 0.05
GAP_CPU_RATIO = 0.05
"""A gap in the watchdog's polls is C code holding the GIL when the loop thread was on a
CPU for at least this share of it: more than a low-priority thread kept off its CPU gets,
and under what a computing thread gets on a crowded machine (a dozen runnable threads
per CPU). Below it, the loop thread waited like the watchdog (for the GIL, for a CPU)."""


_names: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, str] = weakref.WeakKeyDictionary()
_taken: dict[str, int] = {}
_names_lock = threading.Lock()


def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """A short name for a loop, its class and id, unique in the process.

    A later loop at the address of a collected one gets ``#2``, ``#3``...: one report never
    mixes two loops up.
    """
    with _names_lock:
        try:
            name = _names.get(loop)
        except TypeError:  # not weak-referenceable
            return f"{type(loop).__name__}@{id(loop):#x}"
        if name is None:
            base = f"{type(loop).__name__}@{id(loop):#x}"
            count = _taken[base] = _taken.get(base, 0) + 1
            name = _names[loop] = base if count == 1 else f"{base}#{count}"
        return name


@dataclass(frozen=True, slots=True)
class Reading:
    """The loop thread's scheduler counters at monotonic time ``t``, read by itself."""

    t: float
    cpu: float
    """Seconds on a CPU so far."""
    delay: float
    """Seconds runnable but waiting for a CPU so far."""
    process_cpu: float
    """CPU seconds of the whole process (every thread) so far."""


class LoopProbe:
    """Timestamps of one loop's iterations, written by the loop thread, read by the watchdog.

    Must be created and started from the loop's own thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float) -> None:
        self.loop = loop
        self.id = describe_loop(loop)
        self.thread_id = threading.get_ident()
        self.thread = threading.current_thread().name
        self.kind = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        self.threshold = threshold
        self.trigger = threshold / 2
        """The select wrapper looks closer at iterations this long (``-1``: at the next)."""
        self.running = False
        self.busy_since: float | None = None
        """Exact loops: when the running iteration began; ``None`` while waiting in select."""
        self.finished: deque[tuple[float, float, float, Reading | None]] = deque()
        """``(key, start, end, reading at end)`` of iterations at least ``threshold`` long."""
        self.readings: deque[Reading] = deque(maxlen=8)
        """Taken by the loop thread between iterations when the watchdog asks for one."""
        self._want_reading = False
        self.read_due = 0.0
        """Selector loops: when the loop thread next takes a reading by itself."""
        self.lag: list[tuple[float, float]] = []
        self.clock = ThreadClock()
        self._selector: Any = getattr(loop, "_selector", None)
        self.exact = self._selector is not None and hasattr(self._selector, "select")
        self.interval = _EXACT_BEAT_S if self.exact else self.beat_interval(threshold)
        self.due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._wrapped = False
        self._lag_bucket = _LAG_BUCKET_S
        self.retiring = False
        """The loop stopped running; the watchdog forgets it once its stalls are out."""
        self.retired_at: float | None = None
        """When the watchdog forgot it (monotonic)."""
        self.cpu_looks: deque[tuple[float, float]] = deque(maxlen=3)
        """The watchdog's last looks at the loop thread's CPU seconds: ``(when, cpu)``."""
        self.signalled = False
        """A main-thread loop watched with the timer signal too (:mod:`unstall._watch.interrupt`)."""
        self.failed = False
        """An internal error stopped this probe: the loop runs on unwatched."""

    @staticmethod
    def beat_interval(threshold: float) -> float:
        return min(max(threshold / 10, 0.002), 0.05)

    def set_threshold(self, threshold: float) -> None:
        self.threshold = threshold
        self.trigger = threshold / 2
        if not self.exact:
            self.interval = self.beat_interval(threshold)

    def want_reading(self) -> None:
        """Ask the loop thread for a :class:`Reading` at its next iteration boundary.

        On selector loops the request lowers ``trigger`` below zero: the select wrapper
        already compares every iteration with it, so asking costs the loop nothing.
        """
        if self.exact:
            self.trigger = -1.0
        else:
            self._want_reading = True

    # -- loop thread ---------------------------------------------------------------------

    def start(self, mid_iteration: bool) -> None:
        """The loop starts running (or is running and now watched); call in its thread."""
        if self.running or self.failed:
            return
        self.running = True
        if self.exact and not self._wrapped:
            self._wrap_select()
        now = _monotonic()
        # Watching may begin inside a callback (``watch()`` in a coroutine): that callback
        # may block right away, so the iteration counts from now.
        self.busy_since = now if mid_iteration else None
        self.due = now + self.interval
        self._handle = self.loop.call_later(self.interval, self._beat)

    def stop_running(self) -> None:
        """The loop stops running; its last iteration ends now. Call in its thread."""
        if not self.running:
            return
        self.end_iteration(_monotonic())
        if not self.exact:
            self._end_late(_monotonic())
        self.running = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def cut(self, now: float) -> None:
        """End the running iteration here, as if it returned to the loop, and go on."""
        if self.exact:
            self.end_iteration(now)
            self.busy_since = now
        else:
            self._end_late(now)
            self.due = now

    def end_iteration(self, now: float) -> None:
        start = self.busy_since
        if start is not None:
            self.boundary(start, now)
            self.busy_since = None

    def _read(self, now: float) -> Reading | None:
        stat = self.clock.stat()
        return None if stat is None else Reading(now, stat[0], stat[1], _process_time())

    def boundary(self, start: float, now: float) -> None:
        """An iteration that began at ``start`` ends at ``now``: record it if long, and
        take a reading when asked or after a long-ish one (the reading before the next
        iteration, which may be long too). Loop thread, off the fast path."""
        self.trigger, self._want_reading = self.threshold / 2, False
        self.read_due = now + self.threshold / 4
        reading = self._read(now)
        if reading is not None:
            self.readings.append(reading)
        if now - start >= self.threshold:
            self.finished.append((start, start, now, reading))

    def _wrap_select(self) -> None:
        selector = self._selector
        original = selector.select
        probe = self
        monotonic = _monotonic

        # The hot path: one call per loop iteration. An iteration runs from select()
        # returning to select() being called again. The probe's own errors stay here.
        def select(timeout: float | None = None) -> Any:
            try:
                now = monotonic()
                start = probe.busy_since
                if start is not None and now - start >= probe.trigger:
                    probe.boundary(start, now)
                # Callbacks ready (timeout 0): select returns at once, the next iteration
                # begins now (one clock read per busy iteration instead of two).
                probe.busy_since = now if timeout == 0 else None
            except Exception as exc:
                probe.fail(exc)
            if timeout == 0:
                return original(0)
            try:
                return original(timeout)
            finally:
                try:
                    probe.busy_since = now = monotonic()
                    # A reading at the start of the iteration, when asked or due: one is
                    # needed close before any iteration that turns out long (see
                    # starvation), and the loop takes it itself, whether or not the
                    # watchdog got to ask.
                    if probe.trigger < 0 or now >= probe.read_due:
                        probe.boundary(now, now)
                except Exception as exc:
                    probe.fail(exc)

        select.__wrapped__ = original  # type: ignore[attr-defined]
        selector.select = select
        self._wrapped = True

    def unwrap(self) -> None:
        """Restore the selector; safe from any thread."""
        if self._wrapped:
            with contextlib.suppress(AttributeError):
                del self._selector.select
            self._wrapped = False

    def cancel_beat(self) -> None:
        """Stop the heartbeat; call in the loop thread (or when the loop is not running)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.running = False

    def fail(self, exc: BaseException) -> None:
        """An internal error in the loop thread: stop probing, let the loop run on."""
        if self.failed:
            return
        self.failed = True
        contain("the loop probe", f"watching stopped for loop {self.id}", exc)
        with contextlib.suppress(Exception):
            self.unwrap()
        with contextlib.suppress(Exception):
            self.cancel_beat()

    def _beat(self) -> None:
        try:
            self._beat_once()
        except Exception as exc:  # a callback on the user's loop: nothing may escape
            self._handle = None
            self.fail(exc)

    def _beat_once(self) -> None:
        if not self.running:  # stopped or forgotten meanwhile: let the heartbeat die
            self._handle = None
            return
        now = _monotonic()
        lag = now - self.due
        if lag < 0:
            lag = 0.0
        self._record_lag(now, lag)
        feed.emit_lag(self.id, self.thread, lag)
        if not self.exact:
            self._end_late(now)
            if self._want_reading:
                self.boundary(now, now)
        self.due = now + self.interval
        self._handle = self.loop.call_later(self.interval, self._beat)

    def _end_late(self, now: float) -> None:
        # The heartbeat was due at ``self.due``; the blocking callback began between the
        # previous beat and then, so half an interval before is the best estimate.
        start = self.due - self.interval / 2
        if now - start >= self.threshold and now > self.due:
            reading = self._read(now)
            if reading is not None:
                self.readings.append(reading)
            self.finished.append((self.due, start, now, reading))

    def _record_lag(self, now: float, lag: float) -> None:
        points = self.lag
        if points and now - points[-1][0] < self._lag_bucket:
            if lag > points[-1][1]:
                points[-1] = (points[-1][0], lag)
            return
        points.append((now, lag))
        if len(points) > _LAG_MAX_POINTS:
            # Keep a long run's series bounded: halve its resolution.
            merged = [
                (a[0], max(a[1], b[1])) for a, b in zip(points[::2], points[1::2], strict=False)
            ]
            if len(points) % 2:
                merged.append(points[-1])
            self.lag = merged
            self._lag_bucket *= 2

    def info(self, since: float) -> LoopInfo:
        """This loop as a :class:`LoopInfo`, lag times in seconds after ``since``."""
        lag = [(t - since, v) for t, v in list(self.lag) if t >= since]
        return LoopInfo(self.id, self.thread, self.thread_id, self.kind, lag)

    # -- watchdog thread -----------------------------------------------------------------

    def computed(self, now: float, since: float | None = None) -> bool:
        """Whether the loop thread was on a CPU for at least :data:`GAP_CPU_RATIO` of the
        time since the watchdog's last look, or its last look at or before ``since``
        (``True`` when unknown): whether a gap in the watchdog's polls was this thread's
        C code holding the GIL. Without ``since`` (the watchdog, at each poll) this look
        is kept for the next. Any thread."""
        stat = self.clock.stat()
        looks = self.cpu_looks
        if since is None:
            seen = looks[-1] if looks else None
            if stat is not None:
                looks.append((now, stat[0]))
        else:
            seen = next((look for look in reversed(looks) if look[0] <= since), None)
        if stat is None or seen is None or now <= seen[0]:
            return True
        return (stat[0] - seen[1]) / (now - seen[0]) >= GAP_CPU_RATIO

    def busy(self, now: float) -> tuple[float, float] | None:
        """``(key, start)`` of the iteration running now, or ``None`` when idle."""
        if not self.running:
            return None
        if self.exact:
            start = self.busy_since
            return None if start is None else (start, start)
        due = self.due
        if now - due > 0.002:
            return (due, due - self.interval / 2)
        return None
