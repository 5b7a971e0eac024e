"""Samples a loop thread takes of itself, handed to the watchdog.

Some moments cannot be sampled from the watchdog thread: a garbage collection or C code
holding the GIL keeps every other thread waiting, so the watchdog's first look comes after
the interesting part is over. Code that runs on the loop thread right then (a
``gc.callbacks`` callback, a signal handler) records the stack here; the watchdog adds
each one to the loop iteration it fell in.
"""

from __future__ import annotations

from collections import deque

from unstall._watch.sampler import Sample

__all__ = ["drain", "pending", "push"]

_queue: deque[tuple[int, Sample]] = deque(maxlen=256)


def push(thread_id: int, sample: Sample) -> None:
    """Hand the watchdog a sample of thread ``thread_id`` (any thread, lock-free)."""
    _queue.append((thread_id, sample))


def drain() -> list[tuple[int, Sample]]:
    """Take every sample pushed so far (watchdog thread)."""
    out = []
    while True:
        try:
            out.append(_queue.popleft())
        except IndexError:
            return out


def pending() -> bool:
    """Whether a sample waits to be drained."""
    return bool(_queue)
