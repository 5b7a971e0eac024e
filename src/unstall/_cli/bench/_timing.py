"""The two measurements every offloading section makes: sequential latency and throughput."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

Call = Callable[[], Awaitable[Any]]
"""A zero-argument async callable that offloads one trivial call."""


def rotation(items: Sequence[T], round_number: int) -> list[T]:
    """``items`` in the order of round ``round_number``: rotated by one place each round, so
    that no implementation always runs first (or right after the same neighbour)."""
    k = round_number % len(items)
    return [*items[k:], *items[:k]]


async def latency(call: Call, n: int) -> float:
    """Seconds per call, awaiting ``n`` calls one after another (one in flight)."""
    start = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - start) / n


async def throughput(call: Call, per_task: int, in_flight: int) -> float:
    """Calls per second with ``in_flight`` coroutines each awaiting ``per_task`` calls."""

    async def chain() -> None:
        for _ in range(per_task):
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(chain() for _ in range(in_flight)))
    return in_flight * per_task / (time.perf_counter() - start)


async def new_tasks(call: Call, n_tasks: int, in_flight: int) -> float:
    """Calls per second when each call is made by a new task (a server's pattern: one task
    per request): ``n_tasks`` tasks gathered at once, ``in_flight`` of them past an
    ``asyncio.Semaphore`` at a time, each awaiting ``call`` once."""
    gate = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with gate:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n_tasks)))
    return n_tasks / (time.perf_counter() - start)


async def loop_round_trip() -> None:
    """The least any offload costs the loop: suspend until a callback resolves a future."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.call_soon(fut.set_result, None)
    await fut
