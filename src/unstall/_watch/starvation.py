"""Tell a loop kept from running from a loop blocked by its own code.

A long loop iteration is not always the program's doing. On a crowded machine the OS may
leave the loop thread runnable but off every CPU for a while (its run-queue wait, field 2
of ``/proc/self/task/N/schedstat``); another thread of the process may hold the GIL
(pure-Python CPU work offloaded to a thread), so the loop thread, ready to go on, waits for
it. Neither is a line of the loop's code blocking it, and neither is reported as a stall.

The loop thread's own time in an iteration is its wall time less those two waits. The
run-queue wait comes from readings the loop thread takes of its own counters at iteration
boundaries (exact: a thread's waits are counted when it runs again). The GIL wait comes
from the samples: a sample whose thread is blocked in ``futex`` outside any lock call is
waiting for the GIL, and the share of such samples is the share of the time the loop
thread slept (neither ran nor waited for a CPU) that it waited for the GIL; with no sample
at all, all of that time; plus the time the watchdog itself held the GIL. A sample taken
while the thread ran Python (or a builtin such as ``sum`` that never waits, or a call
such as ``os.write`` that only makes a system call) can only be
waiting for the GIL, whoever holds it. One stopped in some other C call may be waiting on
that library's own lock: unless other threads of the process computed for at least a
quarter of that time (a thread holding the GIL for long computes, if not always on a CPU),
no more than they computed is counted for those. Both waits are capped by what the
counters allow, so a loop sleeping in ``time.sleep`` or computing is never
taken for a starved one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from unstall._watch.probe import Reading
from unstall._watch.sampler import Sample

__all__ = ["GIL", "OS", "busy_share", "reading_before", "starved_by"]

GIL = "(waiting for the GIL)"
OS = "(waiting for a CPU)"


def reading_before(readings: Iterable[Reading], start: float) -> Reading | None:
    """The latest reading taken at or before ``start``."""
    found = None
    for reading in readings:
        if reading.t <= start and (found is None or reading.t > found.t):
            found = reading
    return found


def starved_by(
    samples: Sequence[Sample],
    start: float,
    end: float,
    before: Reading | None,
    after: Reading | None,
    threshold: float,
    held: float = 0.0,
) -> str | None:
    """Why the iteration ``[start, end]`` was long though its own code ran briefly.

    Returns :data:`OS` or :data:`GIL` when the loop's own time (wall time less waiting for
    a CPU and for the GIL) was surely under half the threshold, ``None`` otherwise
    (including when there is not enough to tell).

    ``before`` is the loop thread's last reading at or before ``start``: the counters
    cover ``[before.t, end]``, and the part before ``start`` counts as the loop's own
    time, so a real stall is never taken for starvation. ``held`` is how long the
    watchdog itself held the GIL (polling, sampling) during the iteration.
    """
    if before is None or after is None or before.t > start:
        return None
    wall = end - before.t
    delay = min(max(after.delay - before.delay, 0.0), wall)
    cpu = max(after.cpu - before.cpu, 0.0)
    asleep = max(wall - cpu - delay, 0.0)
    others = max(after.process_cpu - before.process_cpu - cpu, 0.0)
    # The share of samples that found it waiting for the GIL, of the time it slept.
    if samples:
        sure = asleep * sum(s.gil_sure for s in samples) / len(samples)
        maybe = asleep * sum(s.gil and not s.gil_sure for s in samples) / len(samples)
    else:
        sure, maybe = 0.0, asleep - held
    # Another thread holding the GIL for long computes meanwhile, on a CPU for at least a
    # share of that time (less than all of it on a crowded machine). Without that, a
    # thread stopped in a C call was waiting on that library's own lock or condition.
    if others < maybe / 4:
        maybe = others
    gil = min(held + sure + maybe, asleep)
    if wall - delay - gil >= threshold / 2:
        return None
    return GIL if gil > delay else OS


def busy_share(before: Reading | None, after: Reading | None) -> float | None:
    """The share of ``[before.t, after.t]`` the loop thread was on a CPU or waiting for one."""
    if before is None or after is None or after.t - before.t <= 0:
        return None
    busy = (after.cpu - before.cpu) + (after.delay - before.delay)
    return max(busy, 0.0) / (after.t - before.t)
