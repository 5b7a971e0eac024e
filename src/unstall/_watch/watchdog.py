"""The one watchdog thread shared by every watcher and every watched loop.

Every few milliseconds it looks at each running loop's probe. While a loop iteration has
lasted more than half the threshold it samples that loop thread's stack; when the loop
side reports the iteration's end, the samples become :class:`Stall` records, handed to the
watchers that want them. A stall still going on is reported as it lasts (``on_hang``).
Faulthandler dumps (see :mod:`unstall._watch.faultdump`) join the samples when the watchdog was
kept from running by C code holding the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from unstall._report import feed
from unstall._report.incidents import contain
from unstall._report.records import LoopInfo, Stall
from unstall._watch import faultdump, gcwatch, interrupt, loop_hooks, witness
from unstall._watch.attribution import CPU_RATIO, LoopMeta, build_stall, split_by_callback
from unstall._watch.culprit import in_the_watcher
from unstall._watch.probe import LoopProbe, Reading
from unstall._watch.sampler import Sample, capture
from unstall._watch.starvation import busy_share, reading_before, starved_by

__all__ = ["Monitor", "Subscription", "monitor"]

_log = logging.getLogger("unstall")
_monotonic = time.monotonic
_process_time = time.process_time
SAMPLE_EVERY_S = 0.005
HANG_EVERY_S = 1.0
GAP_S = 0.01
GC_SHARE = 0.5
"""A stall is of kind ``gc`` when garbage collection took at least this share of it."""
LINGER_S = 2.0


@dataclass
class _Track:
    """Samples of the loop iteration the watchdog is looking at."""

    key: float
    start: float
    samples: list[Sample] = field(default_factory=list)
    hang_at: float | None = None
    handoffs: float = 0.0
    """Seconds the watchdog took to take the GIL from the loop thread, to sample it."""


Delivery = tuple[Callable[[Stall], None], Stall]


@dataclass(eq=False)
class Subscription:
    """What one watcher asks of the watchdog: which loops, from what duration, and where
    to hand what it finds. :class:`~unstall.Watcher` makes one and passes its own methods.

    The callbacks run on the watchdog thread (or on the thread calling ``remove``), with
    stalls timed from the process's monotonic clock; :meth:`relative` re-times a stall
    from ``origin``.
    """

    loop: asyncio.AbstractEventLoop | None
    threshold: float
    origin: float
    on_stall: Callable[[Stall], None]
    on_starved: Callable[[Stall], None]
    on_hang: Callable[[Stall], None]

    paused: bool = False
    """While true, nothing is handed to this subscription (``Watcher.pause``)."""
    on_loop: Callable[[LoopInfo], None] | None = None
    """Told of each loop the first time it starts running (in that loop's thread)."""

    def wants(self, loop: asyncio.AbstractEventLoop) -> bool:
        return not self.paused and (self.loop is None or self.loop is loop)

    def relative(self, stall: Stall) -> Stall:
        return stall.with_updates(start_s=max(stall.start_s - self.origin, 0.0))


class Monitor:
    """Owns the probes, the watchdog thread and the list of active watchers."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._watchers: list[Subscription] = []
        self._probes: dict[int, LoopProbe] = {}
        # Loops that stopped running: their lag series, without keeping the loop alive.
        self._retired: deque[tuple[int, LoopProbe]] = deque(maxlen=256)
        self._tracks: dict[int, _Track] = {}
        self._thread: threading.Thread | None = None
        self._polling = threading.RLock()
        """Held by the watchdog while it polls and delivers."""
        self.threshold = 0.1
        # When the watchdog held the GIL (its polls): the loop may have waited for it.
        self._polls: deque[tuple[float, float]] = deque(maxlen=512)
        self._due = 0.0
        self._woke_late = 0.0
        self._last_poll = 0.0

    def after_fork(self) -> None:
        """In a forked child: the watchdog thread did not come along, nor did its locks."""
        self._thread = None
        self._lock = threading.RLock()
        self._polling = threading.RLock()

    # -- watchers ------------------------------------------------------------------------

    def add(self, watcher: Subscription) -> None:
        loop_hooks.install()
        gcwatch.install()
        with self._lock:
            self._watchers.append(watcher)
            self._retune()
            loop_hooks.set_listener(self._on_loop)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="unstall-watchdog", daemon=True
                )
                self._thread.start()
        target = watcher.loop
        for loop in loop_hooks.running_loops() if target is None else [target]:
            try:
                self._attach_running(loop)
            except Exception as exc:
                contain("attaching to a running loop", "a loop running already is not watched", exc)

    def remove(self, watcher: Subscription) -> None:
        """Finish what is pending for ``watcher`` and stop watching for it.

        When it returns, nothing more is delivered to ``watcher`` (unless called from the
        watchdog thread itself, by a listener).
        """
        self.flush(final_for=watcher)
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)
            self._retune()
            for key, probe in list(self._probes.items()):
                if not self._wanted(probe.loop):
                    del self._probes[key]
                    self._tracks.pop(key, None)
                    try:
                        self._detach(probe)
                    except Exception as exc:
                        contain("releasing a loop", f"loop {probe.id} may still be probed", exc)
            if not self._watchers:
                loop_hooks.set_listener(None)
                gcwatch.uninstall()
                interrupt.detach()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            with self._polling:  # a poll under way delivers before we return
                pass
        with self._lock:
            if not self._watchers:
                try:
                    faultdump.disarm()
                except Exception as exc:
                    contain("the fault dump timer", "a stray stack dump may follow", exc)

    def forget_after_fork(self) -> None:
        """In a forked child: drop the parent's watchers, loops and watchdog thread.

        Only the forking thread exists in the child, so the watchdog thread is gone and a
        lock it held stays held; everything is made anew. Watchers the parent had do not
        watch the child (``unstall run`` starts a new one there).
        """
        self._lock = threading.RLock()
        for probe in self._probes.values():
            with contextlib.suppress(Exception):
                probe.unwrap()
        self._watchers = []
        self._probes = {}
        self._retired.clear()
        self._tracks = {}
        self._thread = None
        self._polls.clear()
        loop_hooks.set_listener(None)
        faultdump.forget_after_fork()

    def _retune(self) -> None:
        if self._watchers:
            self.threshold = min(w.threshold for w in self._watchers)
        for probe in self._probes.values():
            probe.set_threshold(self.threshold)

    def _wanted(self, loop: asyncio.AbstractEventLoop) -> bool:
        return any(w.loop is None or w.loop is loop for w in self._watchers)

    # -- loops ---------------------------------------------------------------------------

    def _attach_running(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is loop:
            self._start_probe(loop, mid_iteration=True)
        elif loop.is_running():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._start_probe_contained, loop)

    def _start_probe_contained(self, loop: asyncio.AbstractEventLoop) -> None:
        """A callback on the user's loop: whatever goes wrong stays here."""
        try:
            self._start_probe(loop, mid_iteration=True)
        except Exception as exc:
            contain("the loop probe's start", "a loop running already is not watched", exc)

    def _on_loop(self, loop: asyncio.AbstractEventLoop, started: bool) -> None:
        if started:
            self._start_probe(loop, mid_iteration=False)
            return
        with self._lock:
            probe = self._probes.get(id(loop))
            if probe is None or probe.loop is not loop:
                return
            probe.stop_running()
            probe.retiring = True
            gcwatch.watch_thread(probe.thread_id, None)
            if probe.signalled:
                interrupt.detach()
        # Deliver its stalls now, in the loop's thread: when asyncio.run() returns they are
        # reported (a process ended right after, e.g. a pool worker, loses none).
        self.flush()

    def _start_probe(self, loop: asyncio.AbstractEventLoop, mid_iteration: bool) -> None:
        with self._lock:
            if not self._wanted(loop):
                return
            probe = self._probes.get(id(loop))
            if probe is None or probe.loop is not loop:
                probe = self._probes[id(loop)] = LoopProbe(loop, self.threshold)
                self._announce(probe)
            probe.retiring = False
            probe.start(mid_iteration)
            gcwatch.watch_thread(probe.thread_id, self.threshold / 4)
            probe.signalled = interrupt.attach(probe.busy, probe.computed, self.threshold)
            # Arm the faulthandler timer now: the loop may enter C code holding the GIL
            # before the watchdog thread runs again.
            self._merge_dumps(faultdump.tick(_monotonic(), True, self.threshold))

    def _announce(self, probe: LoopProbe) -> None:
        for watcher in self._watchers:
            if watcher.on_loop is not None and watcher.wants(probe.loop):
                try:
                    watcher.on_loop(probe.info(watcher.origin))
                except Exception:  # a listener's bug must not stop the loop starting
                    _log.exception("unstall: on_loop listener failed")

    def _detach(self, probe: LoopProbe) -> None:
        probe.unwrap()
        loop = probe.loop
        if not probe.running:
            return
        if threading.get_ident() == probe.thread_id:
            probe.cancel_beat()
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile: nothing to cancel
            loop.call_soon_threadsafe(probe.cancel_beat)

    def loops_for(self, watcher: Subscription) -> list[LoopInfo]:
        """Every loop ``watcher`` saw run (within the last 256 stopped), oldest first."""
        since = watcher.origin
        with self._lock:
            found = [(key, p) for key, p in self._retired] + list(self._probes.items())
        infos: dict[str, LoopInfo] = {}
        for key, probe in found:
            if watcher.loop is not None and id(watcher.loop) != key:
                continue
            if probe.retired_at is not None and probe.retired_at < since:
                continue  # stopped before this watcher began: not one it saw run
            info = probe.info(since)
            if info.id in infos:  # the same loop run again: one series
                infos[info.id].lag.extend(info.lag)
            else:
                infos[info.id] = info
        return list(infos.values())

    def _retire(self, key: int, probe: LoopProbe) -> None:
        probe.unwrap()
        del self._probes[key]
        self._tracks.pop(key, None)
        probe.loop = None  # type: ignore[assignment]  # let the loop be collected
        probe.retired_at = _monotonic()
        self._retired.append((key, probe))

    # -- the watchdog --------------------------------------------------------------------

    def _run(self) -> None:
        interrupt.block_here()
        self._due = _monotonic()
        idle_since: float | None = None
        while True:
            if self._watchers:
                idle_since = None
            elif idle_since is None:
                idle_since = _monotonic()
            elif _monotonic() - idle_since >= LINGER_S and self._retire_thread():
                return
            began = _monotonic()
            # How long waking up took the watchdog: a loop thread it made give up the GIL
            # slept meanwhile (a handoff the loop's code did not ask for).
            self._woke_late = max(began - self._due, 0.0)
            with self._polling:
                interrupt.poll_began(began)
                try:
                    sampling = self.poll()
                except BaseException as exc:  # no bug may end the one watchdog of the process
                    contain("the watchdog", "stalls may be missing", exc)
                    sampling = False
                finally:
                    interrupt.poll_ended(_monotonic())
            self._polls.append((began, _monotonic()))
            self._last_poll = began
            pause = SAMPLE_EVERY_S if sampling else min(self.threshold / 4, 0.025)
            self._due = _monotonic() + pause
            time.sleep(pause)

    def _retire_thread(self) -> bool:
        """End the watchdog thread if still no watcher; the next ``add()`` starts one.

        It waits ``LINGER_S`` first (polling, which costs nothing with no loop to look at):
        a test suite watches each test phase in turn, and a watcher must not cost a thread
        start and join, nor a wake-up signal to a sleeping thread.
        """
        with self._lock:
            if self._watchers:
                return False
            self._thread = None
            return True

    def _held(self, start: float, end: float) -> float:
        """Seconds within ``[start, end]`` the watchdog spent polling, holding the GIL."""
        total = 0.0
        for lo, hi in list(self._polls):
            if hi > start and lo < end:
                total += min(hi, end) - max(lo, start)
        return total

    def poll(self) -> bool:
        """One look at every loop; returns whether a loop is being sampled."""
        deliveries: list[Delivery] = []
        sampling = False
        with self._lock:
            now = _monotonic()
            active = any(p.running for p in self._probes.values())
            dumps = faultdump.tick(now, active and self._watchers != [], self.threshold)
            if dumps:
                self._merge_dumps(dumps)
            if any(p.signalled and p.running for p in self._probes.values()):
                interrupt.arm(now, self.threshold)
            self._merge_witness()
            for key, probe in list(self._probes.items()):
                try:
                    sampling = self._poll_probe(key, probe, now, deliveries) or sampling
                    if probe.retiring and not probe.running and not probe.finished:
                        self._retire(key, probe)
                except Exception as exc:
                    self._drop(key, probe, exc)
        self._deliver(deliveries)
        return sampling

    def _drop(self, key: int, probe: LoopProbe, exc: Exception) -> None:
        """Stop watching one loop after an internal error about it; the others go on."""
        contain("the watchdog", f"watching stopped for loop {probe.id}", exc)
        with contextlib.suppress(Exception):
            self._detach(probe)
        self._probes.pop(key, None)
        self._tracks.pop(key, None)

    def flush(self, final_for: Subscription | None = None) -> None:
        """Turn every finished iteration into stalls now (used by ``Watcher.stop``).

        When ``final_for`` stops from inside a loop it watches, the iteration running there
        is the one calling ``stop()``: it is closed as a stall too if long enough. One
        running long in another thread's loop goes to ``final_for`` as it stands.
        """
        deliveries: list[Delivery] = []
        with self._lock:
            self._merge_witness()
            now = _monotonic()
            me = threading.get_ident()
            for key, probe in list(self._probes.items()):
                try:
                    closing = final_for
                    if closing is not None and not (probe.running and closing.wants(probe.loop)):
                        closing = None
                    if closing is not None and probe.thread_id == me:
                        probe.cut(now)
                    self._poll_probe(key, probe, now, deliveries, sample=False)
                    if closing is not None and probe.thread_id != me:
                        self._unfinished(key, probe, now, closing, deliveries)
                    if probe.retiring and not probe.running and not probe.finished:
                        self._retire(key, probe)
                except Exception as exc:
                    self._drop(key, probe, exc)
        self._deliver(deliveries)

    def _poll_probe(
        self,
        key: int,
        probe: LoopProbe,
        now: float,
        deliveries: list[Delivery],
        sample: bool = True,
    ) -> bool:
        if probe.finished and witness.pending():
            self._merge_witness()
        busy = probe.busy(now)
        track = self._tracks.get(key)
        computed = probe.computed(now) if sample and probe.running else True
        while probe.finished:
            it_key, start, end, after = probe.finished.popleft()
            samples, handoffs = [], 0.0
            if track is not None and track.key == it_key:
                samples, handoffs = track.samples, track.handoffs
                track = None
                self._tracks.pop(key, None)
            before = reading_before(probe.readings, start)
            held = self._held(start, end) + handoffs
            starved = starved_by(samples, start, end, before, after, self.threshold, held)
            # Only over a bracket close to the iteration: idle time before would dilute it.
            tight = before is not None and start - before.t <= self.threshold / 2
            share = busy_share(before, after) if tight else None
            self._finish(probe, samples, start, end, deliveries, starved, share)
        if track is not None and (busy is None or busy[0] != track.key):
            self._tracks.pop(key, None)  # that iteration ended below the threshold
            track = None
        if busy is None or not sample:
            if sample and probe.running:
                probe.want_reading()  # a reading taken before the next long iteration
            return False
        if not probe.loop.is_running():
            # It stopped without telling us (a uvloop loop started before the hook was
            # installed): no heartbeat will come, which is not a hang.
            probe.running, probe.retiring = False, True
            self._tracks.pop(key, None)
            return False
        it_key, start = busy
        if now - start < self.threshold / 2:
            probe.want_reading()
            return False
        if track is None:
            track = self._tracks[key] = _Track(it_key, start)
        # A long hang is sampled less and less often (every 1/200 of its age), so its
        # samples grow with the log of its duration; weighting by time keeps them fair.
        last = track.samples[-1].t if track.samples else None
        if last is None or now - last >= (now - start) / 200:
            # The watchdog was kept from running while the loop thread computed (not while
            # the OS kept it waiting): it stopped right after the C code that held the GIL.
            gap = now - self._last_poll >= max(self.threshold / 2, GAP_S) and computed
            if gap:
                # Still in this iteration (ours may have let the thread run on meanwhile).
                still = probe.busy(_monotonic())
                gap = still is not None and still[0] == it_key
            gap_from = max(self._last_poll, start) if gap else None
            taken = capture(probe.thread_id, probe.loop, probe.clock, now, gap_from)
            again = probe.busy(_monotonic())
            # Naming the call may read source and release the GIL, letting the iteration
            # end meanwhile; a sample after a gap was read where the thread had stopped.
            if taken is not None and (gap or (again is not None and again[0] == it_key)):
                track.samples.append(taken)
                if taken.gil:
                    track.handoffs += self._woke_late
        if (
            now - start >= self.threshold
            and (track.hang_at is None or now - track.hang_at >= HANG_EVERY_S)
            and self._starved_so_far(probe, track, now) is None
        ):
            track.hang_at = now
            self._hang(probe, track, now, deliveries)
        return True

    def _unfinished(
        self,
        key: int,
        probe: LoopProbe,
        now: float,
        watcher: Subscription,
        deliveries: list[Delivery],
    ) -> None:
        """``watcher`` stops while ``probe``'s loop, in another thread, is blocked past its
        threshold: the stall so far goes to it, ``ongoing``, since the iteration's own end
        comes after it stopped (the watchers that go on get the whole stall then)."""
        busy = probe.busy(now)
        if busy is None or now - busy[1] < watcher.threshold:
            return
        track = self._tracks.get(key)
        if track is None or track.key != busy[0]:
            track = _Track(busy[0], busy[1])
        lo, hi, part = split_by_callback(track.samples, track.start, now)[-1]
        if hi - lo < watcher.threshold or _the_watchers_own(part):
            return
        stall = build_stall(part, lo, hi, self._meta(probe), ongoing=True)
        stall = _with_gc(stall, probe.thread_id, lo, hi)
        starved = self._starved_so_far(probe, track, now)
        if starved is not None:
            stall = stall.with_updates(culprit=None, call=starved, kind="unknown")
            deliveries.append((watcher.on_starved, stall))
        else:
            deliveries.append((watcher.on_stall, stall))

    def _meta(self, probe: LoopProbe) -> LoopMeta:
        return LoopMeta(loop=probe.id, thread=probe.thread, thread_id=probe.thread_id)

    def _starved_so_far(self, probe: LoopProbe, track: _Track, now: float) -> str | None:
        """What kept the loop from running, if that is, so far, the iteration going on."""
        stat = probe.clock.stat()
        if stat is None:
            return None
        # Read from here, a wait still going on is not counted yet: this errs on the side
        # of reporting the hang.
        after = Reading(now, stat[0], stat[1], _process_time())
        before = reading_before(probe.readings, track.start)
        held = self._held(track.start, now) + track.handoffs
        return starved_by(track.samples, track.start, now, before, after, self.threshold, held)

    def _finish(
        self,
        probe: LoopProbe,
        samples: list[Sample],
        start: float,
        end: float,
        deliveries: list[Delivery],
        starved: str | None = None,
        busy: float | None = None,
    ) -> None:
        meta = self._meta(probe)
        first = True
        for lo, hi, part in split_by_callback(samples, start, end):
            if hi - lo < self.threshold or _the_watchers_own(part):
                continue
            stall = _with_gc(build_stall(part, lo, hi, meta), probe.thread_id, lo, hi)
            if stall.kind == "unknown" and busy is not None:
                # Too few samples to tell: the loop thread's own counters over the iteration.
                stall = stall.with_updates(kind="cpu" if busy >= CPU_RATIO else "wait")
            if starved is not None:
                # Not the program's doing: kept apart, neither logged nor called back.
                stall = stall.with_updates(culprit=None, call=starved, kind="unknown")
                for watcher in self._watchers:
                    if watcher.wants(probe.loop) and stall.duration_s >= watcher.threshold:
                        deliveries.append((watcher.on_starved, stall))
                continue
            for watcher in self._watchers:
                if watcher.wants(probe.loop) and stall.duration_s >= watcher.threshold:
                    deliveries.append((watcher.on_stall, stall))
                    if first:
                        deliveries.append((_emit, watcher.relative(stall)))
                        first = False

    def _hang(
        self, probe: LoopProbe, track: _Track, now: float, deliveries: list[Delivery]
    ) -> None:
        pieces = split_by_callback(track.samples, track.start, now)
        lo, hi, part = pieces[-1]
        stall = build_stall(part, lo, hi, self._meta(probe), ongoing=True)
        for watcher in self._watchers:
            if watcher.wants(probe.loop) and stall.duration_s >= watcher.threshold:
                deliveries.append((watcher.on_hang, stall))

    def _merge_dumps(self, dumps: list[faultdump.Dump]) -> None:
        """Add each dump, as a sample, to the loop iteration it fell in (if any)."""
        for dump in dumps:
            for key, probe in self._probes.items():
                taken = dump.sample(probe.thread_id)
                if taken is not None:
                    self._add_sample(key, probe, taken)

    def _merge_witness(self) -> None:
        """Add the samples loop threads took of themselves to their iterations."""
        for thread_id, taken in witness.drain():
            for key, probe in self._probes.items():
                if probe.thread_id == thread_id:
                    self._add_sample(key, probe, taken)

    def _add_sample(self, key: int, probe: LoopProbe, taken: Sample) -> None:
        spans = [(k, lo, hi) for k, lo, hi, _ in probe.finished]
        busy = probe.busy(_monotonic())
        if busy is not None:
            spans.append((busy[0], busy[1], _monotonic()))
        span = next((s for s in spans if s[1] <= taken.t <= s[2]), None)
        if span is None:
            return
        track = self._tracks.get(key)
        if track is None or track.key != span[0]:
            track = self._tracks[key] = _Track(span[0], span[1])
        track.samples.append(taken)

    @staticmethod
    def _deliver(deliveries: list[Delivery]) -> None:
        for fn, stall in deliveries:
            try:
                fn(stall)
            except BaseException as exc:  # one failing delivery must not cost the others
                contain("delivering a stall", "a stall may be missing", exc)


def _the_watchers_own(samples: list[Sample]) -> bool:
    """Whether the thread was waiting in the watcher's own stop every time it was seen (for
    the watchdog to finish a poll), not running the program. A garbage collection that
    happened to start in our code is the program's pause all the same."""
    return bool(samples) and all(
        s.method != "gc" and s.frames and in_the_watcher(s.frames[-1].file) for s in samples
    )


def _with_gc(stall: Stall, thread_id: int, start: float, end: float) -> Stall:
    """Add what garbage collection took of the stall; its kind is ``gc`` if most of it."""
    found = gcwatch.overlapping(thread_id, start, end)
    if not found:
        return stall
    gc_s = sum(overlap for overlap, _ in found)
    changes: dict[str, object] = {
        "gc_s": gc_s,
        "gc_generations": tuple(sorted({c.generation for _, c in found})),
        "gc_collected": sum(c.collected for _, c in found),
    }
    if gc_s >= GC_SHARE * stall.duration_s or stall.call == "gc.collect":
        changes["kind"] = "gc"
    return stall.with_updates(**changes)


def _emit(stall: Stall) -> None:
    feed.emit_stall(stall)


monitor = Monitor()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=monitor.after_fork)
