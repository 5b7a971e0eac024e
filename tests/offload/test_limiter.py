"""Limiter: shared capacity across functions, loops and threads; fair; leak-free."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

import unstall
from unstall import Limiter
from unstall._offload.limiter import LimiterStatistics


class Gauge:
    """Counts concurrent holders, from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError)])
def test_bad_capacity_is_a_value_error(value: int, error: type) -> None:
    with pytest.raises(error, match="total_tokens must be at least 1"):
        Limiter(value)


@pytest.mark.parametrize("value", ["2", 2.0, True, None])
def test_non_int_capacity_is_a_type_error(value: Any) -> None:
    with pytest.raises(TypeError, match="total_tokens must be an int"):
        Limiter(value)


def test_setter_validates_too() -> None:
    limiter = Limiter(2)
    with pytest.raises(ValueError):
        limiter.total_tokens = 0
    with pytest.raises(TypeError):
        limiter.total_tokens = 1.5  # type: ignore[assignment]
    assert limiter.total_tokens == 2


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="more times than acquire"):
        Limiter(1).release()


def test_counts_and_statistics() -> None:
    limiter = Limiter(3)

    async def main() -> None:
        async with limiter:
            assert limiter.borrowed_tokens == 1
            assert limiter.available_tokens == 2
            assert limiter.statistics() == LimiterStatistics(3, 1, 0)
        assert limiter.borrowed_tokens == 0

    asyncio.run(main())


def test_shared_by_several_functions_with_real_blocking_work() -> None:
    limiter = Limiter(2)
    gauge = Gauge()

    @unstall.offload(limit=limiter)
    def read_disk(i: int) -> int:
        with gauge:
            time.sleep(0.03)
        return i

    @unstall.offload(limit=limiter)
    def call_api(i: int) -> int:
        with gauge:
            time.sleep(0.03)
        return -i

    async def main() -> list[int]:
        calls = [read_disk(i) for i in range(6)] + [call_api(i) for i in range(6)]
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == list(range(6)) + [-i for i in range(6)]
    assert gauge.peak == 2
    assert limiter.borrowed_tokens == 0


def test_shared_across_two_loops_in_two_threads() -> None:
    limiter = Limiter(3)
    gauge = Gauge()
    results: list[int] = []

    @unstall.offload(limit=limiter)
    def work(i: int) -> int:
        with gauge:
            time.sleep(0.01)
        return i

    def loop_thread(base: int) -> None:
        async def main() -> list[int]:
            return await asyncio.gather(*(work(base + i) for i in range(30)))

        results.extend(asyncio.run(main()))

    threads = [threading.Thread(target=loop_thread, args=(base,)) for base in (0, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(30)) + list(range(100, 130))
    assert gauge.peak == 3
    assert limiter.borrowed_tokens == 0


def test_first_come_first_served() -> None:
    limiter = Limiter(1)
    order: list[int] = []

    async def worker(i: int) -> None:
        async with limiter:
            order.append(i)
            await asyncio.sleep(0.001)

    async def main() -> None:
        async with limiter:
            tasks = []
            for i in range(10):
                tasks.append(asyncio.ensure_future(worker(i)))
                await asyncio.sleep(0)  # arrive in this order
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == list(range(10))


def test_newcomer_does_not_jump_the_queue() -> None:
    limiter = Limiter(1)
    order: list[str] = []

    async def take(name: str) -> None:
        async with limiter:
            order.append(name)

    async def main() -> None:
        await limiter.acquire()
        waiting = asyncio.ensure_future(take("waiter"))
        await asyncio.sleep(0.01)
        limiter.release()  # token goes to the waiter, even though...
        await take("newcomer")  # ...the newcomer asks before the waiter ran
        await waiting

    asyncio.run(main())
    assert order == ["waiter", "newcomer"]


def test_cancelled_waiter_leaves_the_queue_without_a_token() -> None:
    limiter = Limiter(1)

    async def main() -> None:
        await limiter.acquire()
        first = asyncio.ensure_future(limiter.acquire())
        second = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.01)
        assert limiter.statistics().tasks_waiting == 2
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert limiter.statistics().tasks_waiting == 1
        limiter.release()
        await asyncio.wait_for(second, 10)
        assert limiter.borrowed_tokens == 1
        limiter.release()

    asyncio.run(main())
    assert limiter.borrowed_tokens == 0


def test_token_handed_to_a_waiter_being_cancelled_is_passed_on() -> None:
    limiter = Limiter(1)

    async def main() -> None:
        await limiter.acquire()
        doomed = asyncio.ensure_future(limiter.acquire())
        other = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.01)
        limiter.release()  # the token is granted to `doomed`...
        doomed.cancel()  # ...which is cancelled before it could run
        with pytest.raises(asyncio.CancelledError):
            await doomed
        await asyncio.wait_for(other, 10)  # the token reached the next waiter
        assert limiter.borrowed_tokens == 1
        limiter.release()

    asyncio.run(main())
    assert limiter.borrowed_tokens == 0


def test_release_from_another_thread_wakes_a_waiter() -> None:
    limiter = Limiter(1)

    async def main() -> None:
        await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.01)
        await asyncio.to_thread(limiter.release)
        await asyncio.wait_for(waiter, 10)
        limiter.release()

    asyncio.run(main())
    assert limiter.borrowed_tokens == 0


def test_raising_capacity_wakes_waiters() -> None:
    limiter = Limiter(1)

    async def main() -> None:
        await limiter.acquire()
        waiters = [asyncio.ensure_future(limiter.acquire()) for _ in range(2)]
        await asyncio.sleep(0.01)
        limiter.total_tokens = 3
        await asyncio.wait_for(asyncio.gather(*waiters), 10)
        assert limiter.borrowed_tokens == 3
        for _ in range(3):
            limiter.release()

    asyncio.run(main())


def test_no_token_leaks_under_random_cancels_on_two_loops() -> None:
    limiter = Limiter(2)
    gauge = Gauge()
    errors: list[BaseException] = []

    async def holder(rng: random.Random) -> None:
        async with limiter:
            with gauge:
                await asyncio.sleep(rng.random() * 0.002)

    def loop_thread(seed: int) -> None:
        rng = random.Random(seed)

        async def main() -> None:
            tasks = [asyncio.ensure_future(holder(rng)) for _ in range(150)]
            for task in tasks:
                if rng.random() < 0.4:
                    await asyncio.sleep(rng.random() * 0.001)
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop_thread, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert gauge.peak <= 2
    assert limiter.statistics() == LimiterStatistics(2, 0, 0)
