"""Exactly once (issue 8): random mixes of calls, cancellations, timeouts, failures and
limits, through threads and through processes.

Every call either completes exactly once (its result or its own exception reaches the
caller) or is visibly cancelled or timed out; nothing runs twice, a call whose caller
gave up while it was queued never runs, limits hold and give back every token, and no
thread or process is left behind.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import unstall
from helpers import SLACK_S
from unstall import Limiter, ProcessPool, ThreadPool


class Boom(Exception):
    """The call's own failure; ``args[0]`` is the call's index."""


@dataclass(frozen=True)
class Step:
    action: str  # "await", "cancel" (the task, after `when`) or "timeout" (of `when`)
    duration: float  # how long the call works
    when: float
    fails: bool  # the call raises Boom(i) at its end
    mode: str  # "abandon" or "wait"
    limited: bool  # goes through the example's shared Limiter


def steps(max_duration: float) -> st.SearchStrategy[Step]:
    return st.builds(
        Step,
        action=st.sampled_from(["await", "cancel", "timeout"]),
        duration=st.floats(min_value=0, max_value=max_duration),
        when=st.floats(min_value=0, max_value=max_duration),
        fails=st.booleans(),
        mode=st.sampled_from(["abandon", "wait"]),
        limited=st.booleans(),
    )


async def drive(i: int, step: Step, target: object, limiter: Limiter, fn: Any) -> tuple[str, Any]:
    """Make call ``i`` as ``step`` says; return what its caller saw."""
    offloaded = unstall.offload(
        on=target,
        limit=limiter if step.limited else None,
        timeout=step.when + 0.001 if step.action == "timeout" else None,
        cancel=step.mode,  # type: ignore[arg-type]
    )(fn)
    task = asyncio.ensure_future(offloaded(i, step.duration, step.fails))
    if step.action == "cancel":
        await asyncio.sleep(step.when)
        task.cancel()
    try:
        return "ok", await task
    except Boom as exc:
        return "raised", exc.args[0]
    except TimeoutError:
        return "timeout", None
    except asyncio.CancelledError:
        return "cancelled", None


def check_outcomes(plan: list[Step], outcomes: list[tuple[str, Any]], runs: Counter[int]) -> None:
    for i, (step, (seen, value)) in enumerate(zip(plan, outcomes, strict=True)):
        assert runs[i] <= 1, f"call {i} ran {runs[i]} times"
        if seen in ("ok", "raised"):
            assert value == i  # its own result or its own exception, not a neighbour's
            assert runs[i] == 1
            assert seen == ("raised" if step.fails else "ok")
        if step.action == "await":
            assert seen == ("raised" if step.fails else "ok")  # nobody gave up on it
        elif step.action == "cancel":
            assert seen in ("ok", "raised", "cancelled")
        else:
            assert seen in ("ok", "raised", "timeout")


# ---------------------------------------------------------------- threads


class ThreadLedger:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: Counter[int] = Counter()
        self.finished: Counter[int] = Counter()
        self.limited_now = 0
        self.limited_peak = 0


ledger = ThreadLedger()
LIMITED: set[int] = set()


def thread_work(i: int, duration: float, fails: bool) -> int:
    with ledger.lock:
        ledger.started[i] += 1
        if i in LIMITED:
            ledger.limited_now += 1
            ledger.limited_peak = max(ledger.limited_peak, ledger.limited_now)
    try:
        time.sleep(duration)
    finally:
        with ledger.lock:
            ledger.finished[i] += 1
            if i in LIMITED:
                ledger.limited_now -= 1
    if fails:
        raise Boom(i)
    return i


def workers(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix + "-")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(steps(0.02), min_size=1, max_size=30),
    threads=st.integers(min_value=1, max_value=4),
    tokens=st.integers(min_value=1, max_value=3),
)
def test_threads_run_every_call_exactly_once_or_visibly_not(
    plan: list[Step], threads: int, tokens: int
) -> None:
    global ledger
    ledger = ThreadLedger()
    LIMITED.clear()
    LIMITED.update(i for i, s in enumerate(plan) if s.limited)
    pool = ThreadPool(max_workers=threads, name="once")
    limiter = Limiter(tokens)

    async def main() -> list[tuple[str, Any]]:
        return await asyncio.gather(
            *(drive(i, s, pool, limiter, thread_work) for i, s in enumerate(plan))
        )

    outcomes = asyncio.run(main())
    pool.shutdown(wait=True)  # abandoned calls finish; queued cancelled ones must not run
    assert workers("once") == []  # no thread left behind
    check_outcomes(plan, outcomes, ledger.started)
    assert ledger.started == ledger.finished  # every call that started, ended
    for i, (seen, _) in enumerate(outcomes):
        if seen in ("ok", "raised"):
            assert ledger.finished[i] == 1
    # The limiter gave back every token and has nobody waiting.
    stats = limiter.statistics()
    assert (stats.borrowed_tokens, stats.tasks_waiting) == (0, 0)
    # An abandoned call keeps running after its token is returned; otherwise the limit holds.
    abandoned = any(s.limited and s.action != "await" and s.mode == "abandon" for s in plan)
    if not abandoned:
        assert ledger.limited_peak <= tokens


# ---------------------------------------------------------------- processes


def process_work(log: str, i: int, duration: float, fails: bool) -> int:
    with open(log, "a") as f:  # one short O_APPEND write per line: lines never interleave
        f.write(f"start {i} {os.getpid()}\n")
    time.sleep(duration)
    with open(log, "a") as f:
        f.write(f"end {i} {os.getpid()}\n")
    if fails:
        raise Boom(i)
    return i


def read_log(log: Path) -> tuple[Counter[int], Counter[int], set[int]]:
    started: Counter[int] = Counter()
    ended: Counter[int] = Counter()
    pids: set[int] = set()
    for line in log.read_text().splitlines() if log.exists() else []:
        what, i, pid = line.split()
        (started if what == "start" else ended)[int(i)] += 1
        pids.add(int(pid))
    return started, ended, pids


def reaped(pid: int) -> bool:
    """The process is gone and its exit status collected (not even a zombie is left)."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


T = TypeVar("T")


def run_bounded(main: Callable[[], Coroutine[Any, Any, T]], what: str) -> T:
    """``asyncio.run(main())``, but a call that never ends (not even when cancelled) fails
    the test, naming ``what``, instead of hanging the whole suite."""
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(main())
        loop.run_until_complete(asyncio.wait({task}, timeout=SLACK_S * 6))
        if not task.done():
            task.cancel()
            loop.run_until_complete(asyncio.wait({task}, timeout=SLACK_S))
            pytest.fail(f"calls still pending after {SLACK_S * 6:.0f} s: {what}")
        return task.result()
    finally:
        loop.close()


@pytest.fixture(scope="module")
def process_pool() -> Iterator[ProcessPool]:
    with ProcessPool(2, name="once-process") as pool:
        yield pool


@pytest.fixture(scope="module")
def every_worker_pid() -> set[int]:
    return set()


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(plan=st.lists(steps(0.05), min_size=1, max_size=6), tokens=st.integers(1, 2))
def test_processes_run_every_call_exactly_once_or_visibly_not(
    plan: list[Step],
    tokens: int,
    process_pool: ProcessPool,
    every_worker_pid: set[int],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    log = tmp_path_factory.mktemp("once") / "calls.log"
    limiter = Limiter(tokens)

    def work(i: int, duration: float, fails: bool) -> int:
        return process_work(str(log), i, duration, fails)

    async def main() -> tuple[list[tuple[str, Any]], int]:
        outcomes = await asyncio.gather(
            *(drive(i, s, process_pool, limiter, work) for i, s in enumerate(plan))
        )
        return outcomes, await process_pool.run(os.getpid)  # the pool still works

    outcomes, healthy_pid = run_bounded(main, f"plan={plan!r} pool={process_pool!r}")
    started, ended, pids = read_log(log)
    every_worker_pid.update(pids | {healthy_pid})
    check_outcomes(plan, outcomes, started)
    for i, (seen, _) in enumerate(outcomes):
        if seen in ("ok", "raised"):
            assert ended[i] == 1
    stats = limiter.statistics()
    assert (stats.borrowed_tokens, stats.tasks_waiting) == (0, 0)
    # Killed workers are gone; what is left is at most the pool's size, all idle.
    alive = [p for p in pids if running(p)]
    assert len(alive) <= process_pool.max_workers
    assert not process_pool._busy


def test_no_worker_process_outlives_its_pool(
    process_pool: ProcessPool, every_worker_pid: set[int]
) -> None:
    """Runs after the property test (same module fixtures): shut down, nothing is left."""
    assert every_worker_pid, "the property test above ran no process call"
    process_pool.shutdown(wait=True)
    deadline = time.monotonic() + SLACK_S
    while not all(reaped(p) for p in every_worker_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in every_worker_pid if not reaped(p)] == []


# ---------------------------------------------------------------- one limiter, several loops


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    loops=st.integers(min_value=2, max_value=4),
    tokens=st.integers(min_value=1, max_value=4),
    plans=st.lists(
        st.lists(st.tuples(st.floats(0, 0.005), st.booleans(), st.floats(0, 0.005)), max_size=40),
        min_size=4,
        max_size=4,
    ),
)
def test_a_limiter_shared_by_loops_in_threads_holds_and_returns_every_token(
    loops: int, tokens: int, plans: list[list[tuple[float, bool, float]]]
) -> None:
    """Calls with ``cancel="wait"`` (a cancelled running call keeps its token until it
    ends) from several loops in several threads, some cancelled: the limit holds across
    loops, nothing runs twice, and every token comes back."""
    limiter = Limiter(tokens)
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    runs: Counter[tuple[int, int]] = Counter()

    def work(key: tuple[int, int], duration: float) -> None:
        with lock:
            runs[key] += 1
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(duration)
        with lock:
            state["now"] -= 1

    limited = unstall.offload(limit=limiter, cancel="wait")(work)

    async def one(key: tuple[int, int], duration: float, cancel: bool, when: float) -> str:
        task = asyncio.ensure_future(limited(key, duration))
        if cancel:
            await asyncio.sleep(when)
            task.cancel()
        try:
            await task
            return "ok"
        except asyncio.CancelledError:
            return "cancelled"

    outcomes: dict[int, list[str]] = {}

    def serve(n: int) -> None:
        async def main() -> list[str]:
            return await asyncio.gather(*(one((n, i), *step) for i, step in enumerate(plans[n])))

        outcomes[n] = asyncio.run(main())

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(loops)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SLACK_S * 6)
    assert sorted(outcomes) == list(range(loops))  # every loop finished
    assert state["peak"] <= tokens
    assert all(count == 1 for count in runs.values())
    for n in range(loops):
        for i, (outcome, step) in enumerate(zip(outcomes[n], plans[n], strict=True)):
            if not step[1]:
                assert outcome == "ok"
            if outcome == "ok":
                assert runs[(n, i)] == 1
    stats = limiter.statistics()
    assert (stats.borrowed_tokens, stats.tasks_waiting) == (0, 0)
