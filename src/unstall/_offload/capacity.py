"""The default pools' statistics, and every live pool's, in one place."""

from __future__ import annotations

import bisect

from unstall._offload import process_pool, thread_pool
from unstall._offload.statistics import QUEUE_WAIT_BUCKETS, PoolStatistics

__all__ = ["all_pool_statistics", "pool_statistics", "wait_marks", "wait_notes"]


def pool_statistics() -> dict[str, PoolStatistics]:
    """Statistics of the default pools: ``"thread"`` (behind :func:`unstall.to_thread` and
    ``offload()``) and, once it was used, ``"process"`` (behind :func:`unstall.to_process`
    and ``offload(on="process")``). See :class:`~unstall.PoolStatistics`."""
    stats = {"thread": thread_pool.default_thread_pool().statistics()}
    process = process_pool._default
    if process is not None and not process._closed:
        stats["process"] = process.statistics()
    return stats


def all_pool_statistics() -> list[PoolStatistics]:
    """Statistics of every pool alive in this process, thread pools first."""
    return [pool.statistics() for pool in _live_pools()]


WAIT_NOTE_S = 1.0
"""A call that waited this long for a worker is worth a note in the watcher's report."""
_SLOW_FROM = bisect.bisect_right(QUEUE_WAIT_BUCKETS, WAIT_NOTE_S)  # buckets of longer waits

Marks = dict[int, tuple[int, float]]


def _live_pools() -> list[thread_pool.ThreadPool | process_pool.ProcessPool]:
    return [*thread_pool._pools, *process_pool._pools]


def _slow(stats: PoolStatistics) -> int:
    return sum(stats.queue_wait_buckets[_SLOW_FROM:])


def wait_marks() -> Marks:
    """Where each live pool's waits stand now, to compare with later (:func:`wait_notes`)."""
    marks: Marks = {}
    for pool in _live_pools():
        stats = pool.statistics()
        marks[id(pool)] = (_slow(stats), stats.max_queue_wait_s)
    return marks


def wait_notes(marks: Marks) -> list[str]:
    """One line per pool whose calls waited over :data:`WAIT_NOTE_S` for a worker since
    ``marks`` were taken (or wait now): the pool was full, the loop may look healthy."""
    notes = []
    for pool in _live_pools():
        stats = pool.statistics()
        slow_before, max_before = marks.get(id(pool), (0, 0.0))
        slow = _slow(stats) - slow_before
        waiting = stats.longest_queue_wait_s >= WAIT_NOTE_S
        if slow <= 0 and not waiting:
            continue
        longest = max(
            stats.longest_queue_wait_s,
            stats.max_queue_wait_s if stats.max_queue_wait_s > max_before else WAIT_NOTE_S,
        )
        calls = f"{slow} call{'s' if slow != 1 else ''} waited over {WAIT_NOTE_S:g} s"
        if waiting:
            calls += f", {stats.calls_queued} wait now"
        notes.append(
            f"the {stats.kind} pool {stats.name!r} was full for {longest:.2f} s or more "
            f"({calls} for one of its {stats.max_workers} workers): raise its max_workers, "
            "or bound the callers with a Limiter"
        )
    return notes
