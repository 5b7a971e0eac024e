"""The per-loop inbox: outcomes from worker threads reach the loop, one wake-up per burst."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from unstall._offload.inbox import Inbox


class Outcome:
    """A Settleable that records where its outcome went."""

    def __init__(self) -> None:
        self.settled: list[Any] = []
        self.dropped: list[Any] = []

    def settle(self, ok: bool, value: Any) -> None:
        self.settled.append(value)

    def drop(self, ok: bool, value: Any) -> None:
        self.dropped.append(value)


class CountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that counts its thread-safe wake-ups."""

    wakeups = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_a_burst_of_outcomes_costs_one_wakeup_and_one_drain() -> None:
    loop = CountingLoop()
    inbox = Inbox(loop)
    outcomes = [Outcome() for _ in range(100)]

    def worker() -> None:
        for i, outcome in enumerate(outcomes):
            inbox.deliver(outcome, True, i)

    async def main() -> None:
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()  # the loop is blocked meanwhile: every outcome waits in the inbox
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert loop.wakeups == 1
    assert [o.settled for o in outcomes] == [[i] for i in range(100)]


def test_every_outcome_from_many_threads_is_settled_exactly_once() -> None:
    threads, per_thread = 8, 2000
    outcomes = [[Outcome() for _ in range(per_thread)] for _ in range(threads)]

    async def main() -> None:
        inbox = Inbox(asyncio.get_running_loop())
        done = asyncio.Event()

        def worker(mine: list[Outcome]) -> None:
            for i, outcome in enumerate(mine):
                inbox.deliver(outcome, True, i)

        workers = [threading.Thread(target=worker, args=(o,)) for o in outcomes]
        for t in workers:
            t.start()

        def joiner() -> None:
            for t in workers:
                t.join()
            inbox.deliver(Finish(done), True, None)  # delivered after every other outcome

        threading.Thread(target=joiner).start()
        await asyncio.wait_for(done.wait(), 30)

    asyncio.run(main())
    for mine in outcomes:
        assert [o.settled for o in mine] == [[i] for i in range(per_thread)]


class Finish(Outcome):
    def __init__(self, done: asyncio.Event) -> None:
        super().__init__()
        self.done = done

    def settle(self, ok: bool, value: Any) -> None:
        self.done.set()


def test_outcomes_for_a_closed_loop_are_dropped_quietly() -> None:
    loop = asyncio.new_event_loop()
    inbox = Inbox(loop)
    first, second, third = Outcome(), Outcome(), Outcome()
    inbox.deliver(first, True, 1)  # schedules a drain that never runs
    loop.close()
    inbox.deliver(second, False, ValueError("late"))  # a drain is pending, on a closed loop
    inbox.deliver(third, True, 3)
    assert [first.dropped, second.settled, third.dropped] == [[1], [], [3]]
    assert isinstance(second.dropped[0], ValueError)


def test_drop_if_closed_frees_what_a_closed_loop_never_drained() -> None:
    loop = asyncio.new_event_loop()
    inbox = Inbox(loop)
    outcome = Outcome()
    inbox.deliver(outcome, True, 1)
    loop.close()
    inbox.drop_if_closed()
    assert outcome.dropped == [1]
    assert outcome.settled == []
