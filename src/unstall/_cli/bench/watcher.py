"""Bench section "watcher": what watching a busy loop costs, next to asyncio's debug mode.

Two workloads, a fixed amount of work each, on each event loop:

- queue: 2,000 consumer tasks and 20 producers exchanging items through an ``asyncio.Queue``
  (many callbacks per loop iteration, the shape of a busy service);
- ping-pong: one task awaiting ``asyncio.sleep(0)`` (one callback per iteration: the worst
  case for a per-iteration cost).

A third workload, "sleep(0) x800 + queue": 800 tasks awaiting ``asyncio.sleep(0)`` while
30,000 items go through a queue (loop-heavy: thousands of short iterations).

Modes: plain; plain with one idle thread (a process with a second thread, any thread,
runs trivial callbacks a few percent slower: the fair baseline for a watchdog thread, and
what most services already are); ``unstall.watch()`` (heartbeat, selector probe, watchdog
thread); the peers pyleak (``no_event_loop_blocking``, a checker thread) and aiocop
(audit hooks plus a wrapper around every callback; it patches the process for good, so
each of its rounds runs in a child process); asyncio's debug mode. The opt-in faulthandler route is not measured here: its dumps may crash a
process under load (see ``unstall._watch.faultdump``). Modes
run interleaved, round after round (the order rotates), and each figure is the median of
the rounds. Throughput is counted per CPU second of the whole process (the watchdog's
threads included), which a busy machine disturbs much less than wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

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


async def _sleepers_and_queue(items: int) -> int:
    """800 tasks awaiting ``asyncio.sleep(0)`` while ``items`` go through a queue."""
    stop = False

    async def sleeper() -> None:
        while not stop:
            await asyncio.sleep(0)

    async def consumer(queue: asyncio.Queue[int]) -> None:
        while True:
            await queue.get()
            queue.task_done()

    sleepers = [asyncio.create_task(sleeper()) for _ in range(800)]
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1_000)
    consumers = [asyncio.create_task(consumer(queue)) for _ in range(4)]
    for i in range(items):
        await queue.put(i)
    await queue.join()
    stop = True
    for task in consumers:
        task.cancel()
    await asyncio.gather(*sleepers, *consumers, return_exceptions=True)
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
        async with _watching(mode):
            await asyncio.sleep(0.01)
            start = time.process_time()
            done = await work(items)
            return done / (time.process_time() - start)

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


@contextlib.asynccontextmanager
async def _watching(mode: str) -> AsyncIterator[None]:
    """Watch the running loop as ``mode`` says, with each tool's threshold at 0.1 s."""
    if mode == "watched":
        watcher = watch(threshold=0.1, log=False)
        try:
            yield
        finally:
            watcher.stop()
    elif mode == "pyleak":
        from pyleak import no_event_loop_blocking
        from pyleak.base import LeakAction

        quiet = logging.getLogger("unstall.bench.pyleak")
        quiet.disabled = True  # as watch(log=False): what it finds is not printed
        async with no_event_loop_blocking(action=LeakAction.LOG, logger=quiet, threshold=0.1):
            yield
    elif mode == "aiocop":
        import aiocop

        aiocop.patch_audit_functions()
        aiocop.start_blocking_io_detection()
        aiocop.detect_slow_tasks(threshold_ms=100)
        aiocop.activate()
        yield
    else:
        yield


def _in_child(kind: str, mode: str, work: Workload, items: int) -> float:
    """One run in a fresh child process (for a peer that patches its process for good)."""
    code = (
        "import sys; from unstall._cli.bench import watcher as w; "
        f"print(w._run_once({kind!r}, {mode!r}, w.{work.__name__}, {items}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    return float(done.stdout.strip().splitlines()[-1])


# "plain + idle thread": a second thread that never runs already costs a few percent on
# a loop of trivial callbacks (the process goes multi-threaded); most services have one.
MODES = ("plain", "plain + idle thread", "watched", "pyleak", "aiocop", "debug")
PEERS = {"pyleak": "pyleak", "aiocop": "aiocop"}
"""Peer modes and the module each needs (left out when not installed)."""


def _modes() -> tuple[str, ...]:
    return tuple(
        m for m in MODES if m not in PEERS or importlib.util.find_spec(PEERS[m]) is not None
    )


def _measure(kind: str, work: Workload, items: int, rounds: int) -> dict[str, float]:
    modes = _modes()
    results: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in _timing.rotation(modes, r):
            # Debug mode is 10x-100x slower: a tenth of the work keeps its rounds short.
            n = items // 10 if mode == "debug" else items
            once = _in_child if mode == "aiocop" else _run_once
            results[mode].append(once(kind, mode, work, n))
    return {m: statistics.median(v) for m, v in results.items()}


def _cost(m: dict[str, float], mode: str) -> str:
    if mode not in m:
        return f"({PEERS[mode]} not installed)"
    return f"{(1 - m[mode] / m['plain']) * 100:+.1f}%"


def run(opts: BenchOptions) -> list[Table]:
    loops = [k for k in opts.loops if k != "uvloop" or importlib.util.find_spec("uvloop")]
    rounds = 2 if opts.quick else 9
    workloads: list[tuple[str, Workload, int]] = [
        ("queue, 2,000 tasks", _queue_work, 5_000 if opts.quick else 200_000),
        ("sleep(0) x800 + queue", _sleepers_and_queue, 1_000 if opts.quick else 30_000),
        ("ping-pong", _ping_pong, 5_000 if opts.quick else 200_000),
    ]
    table = Table(
        "Watcher",
        [
            "loop",
            "workload",
            "plain (items/CPU s)",
            "watched: cost",
            "watched: cost vs plain + idle thread",
            "pyleak: cost",
            "aiocop: cost",
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
                    _cost(m, "pyleak"),
                    _cost(m, "aiocop"),
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
