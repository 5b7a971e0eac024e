"""Bench section "watcher": what watching a busy loop costs, next to asyncio's debug mode.

Two workloads, a fixed amount of work each, on each event loop:

- queue: 2,000 consumer tasks and 20 producers exchanging items through an ``asyncio.Queue``
  (many callbacks per loop iteration, the shape of a busy service);
- ping-pong: one task awaiting ``asyncio.sleep(0)`` (one callback per iteration: the worst
  case for a per-iteration cost).

Modes: plain; plain with one idle thread (a process with a second thread, any thread,
runs trivial callbacks a few percent slower: the fair baseline for a watchdog thread, and
what most services already are); ``unstall.watch()`` (heartbeat, selector probe, watchdog thread); asyncio's
debug mode. The opt-in faulthandler route is not measured here: its dumps may crash a
process under load (see ``unstall._watch.faultdump``). Modes
run interleaved, round after round (the order rotates), and each figure is the median of
the rounds. Throughput is counted per CPU second of the whole process (the watchdog's
threads included), which a busy machine disturbs much less than wall-clock time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import statistics
import threading
import time
from collections.abc import Awaitable, Callable

from unstall._cli.bench import BenchOptions, _timing
from unstall._cli.bench._table import Table, fmt_ratio
from unstall._watch.watcher import watch

CONSUMERS = 2_000
PRODUCERS = 20

Workload = Callable[[int], Awaitable[int]]


async def _queue_work(items: int) -> int:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1_000)
    total = 0

    async def consumer() -> None:
        nonlocal total
        while True:
            total += await queue.get()
            queue.task_done()

    async def producer(count: int) -> None:
        for i in range(count):
            await queue.put(i & 1)

    consumers = [asyncio.create_task(consumer()) for _ in range(CONSUMERS)]
    await asyncio.gather(*(producer(items // PRODUCERS) for _ in range(PRODUCERS)))
    await queue.join()
    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    return items


async def _ping_pong(items: int) -> int:
    for _ in range(items):
        await asyncio.sleep(0)
    return items


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run_once(kind: str, mode: str, work: Workload, items: int) -> float:
    """Items per CPU second (all threads of the process) for one run of ``work``.

    CPU time, not wall time: the watchdog thread's work counts, and other processes on
    the machine do not.
    """

    async def main() -> float:
        watcher = watch(threshold=0.1, log=False) if mode.startswith("watched") else None
        try:
            await asyncio.sleep(0.01)
            start = time.process_time()
            done = await work(items)
            return done / (time.process_time() - start)
        finally:
            if watcher is not None:
                watcher.stop()

    idle = threading.Event()
    other = threading.Thread(target=idle.wait) if mode == "plain + idle thread" else None
    if other is not None:
        other.start()
    loop = _new_loop(kind)
    loop.set_debug(mode == "debug")
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
        idle.set()
        if other is not None:
            other.join()


# "plain + idle thread": a second thread that never runs already costs a few percent on
# a loop of trivial callbacks (the process goes multi-threaded); most services have one.
MODES = ("plain", "plain + idle thread", "watched", "debug")


def _measure(kind: str, work: Workload, items: int, rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds):
        for mode in _timing.rotation(MODES, r):
            # Debug mode is 10x-100x slower: a tenth of the work keeps its rounds short.
            n = items // 10 if mode == "debug" else items
            results[mode].append(_run_once(kind, mode, work, n))
    return {m: statistics.median(v) for m, v in results.items()}


def run(opts: BenchOptions) -> list[Table]:
    loops = [k for k in opts.loops if k != "uvloop" or importlib.util.find_spec("uvloop")]
    rounds = 3 if opts.quick else 9
    workloads: list[tuple[str, Workload, int]] = [
        ("queue, 2,000 tasks", _queue_work, 20_000 if opts.quick else 200_000),
        ("ping-pong", _ping_pong, 20_000 if opts.quick else 200_000),
    ]
    table = Table(
        "Watcher",
        [
            "loop",
            "workload",
            "plain (items/CPU s)",
            "watched: cost",
            "watched: cost vs plain + idle thread",
            "debug mode: slowdown",
        ],
    )
    asyncio_log = logging.getLogger("asyncio")
    level = asyncio_log.level
    asyncio_log.setLevel(logging.CRITICAL)  # debug mode's slow-callback lines
    try:
        for kind in loops:
            for name, work, items in workloads:
                m = _measure(kind, work, items, rounds)
                plain = m["plain"]
                table.add(
                    kind,
                    name,
                    f"{plain:,.0f}",
                    f"{(1 - m['watched'] / plain) * 100:+.1f}%",
                    f"{(1 - m['watched'] / m['plain + idle thread']) * 100:+.1f}%",
                    fmt_ratio(plain / m["debug"]),
                )
    finally:
        asyncio_log.setLevel(level)
    table.notes.append(
        "cost: throughput lost against plain (negative: within noise); "
        f"median of {rounds} interleaved rounds; threshold 0.1 s"
    )
    if "uvloop" in opts.loops and "uvloop" not in loops:
        table.notes.append("uvloop not installed: `pip install 'unstall[uvloop]'`")
    return [table]
