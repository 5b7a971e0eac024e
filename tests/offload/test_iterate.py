"""unstall.iterate: draining blocking iterators in a worker, in batches."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import unstall
from helpers import wait_until
from unstall import ThreadPool


class Tracked:
    """A generator factory that records where it runs and whether it was closed."""

    def __init__(self, n: int, delay: float = 0.0) -> None:
        self.n = n
        self.delay = delay
        self.produced = 0
        self.threads: set[str] = set()
        self.closed_in: str | None = None

    def __iter__(self) -> Iterator[int]:
        try:
            for i in range(self.n):
                self.threads.add(threading.current_thread().name)
                if self.delay:
                    time.sleep(self.delay)
                self.produced += 1
                yield i
        finally:
            self.closed_in = threading.current_thread().name


def test_yields_every_item_in_order_from_a_worker() -> None:
    source = Tracked(1000)

    async def main() -> list[int]:
        return [x async for x in unstall.iterate(source, batch=64)]

    assert asyncio.run(main()) == list(range(1000))
    assert source.threads
    assert all(t.startswith("unstall-worker-") for t in source.threads)


def test_one_handoff_per_batch() -> None:
    handoffs = 0

    class CountingPool(ThreadPool):
        async def submit(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal handoffs
            handoffs += 1
            return await super().submit(*args, **kwargs)

    with CountingPool(max_workers=1) as pool:

        async def main() -> int:
            return sum([x async for x in unstall.iterate(range(1000), batch=100, on=pool)])

        assert asyncio.run(main()) == sum(range(1000))
    assert handoffs == 11  # ten full batches, then one that finds the end


def test_lines_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {i}\n" for i in range(500)))

    async def main() -> int:
        with path.open() as f:
            count = 0
            async for line in unstall.iterate(f, batch=50):
                assert line.startswith("line ")
                count += 1
            assert not f.closed  # iterate leaves an object it did not create open
            return count

    assert asyncio.run(main()) == 500


def test_sqlite_cursor_on_its_own_thread() -> None:
    with ThreadPool(max_workers=1, name="db") as db:

        async def main() -> list[tuple[int]]:
            conn = await db.run(sqlite3.connect, ":memory:")
            cursor = await db.run(
                conn.execute,
                "with recursive c(x) as (select 1 union all select x + 1 from c where x < 250)"
                " select x from c",
            )
            rows = [row async for row in unstall.iterate(cursor, batch=32, on=db)]
            await db.run(conn.close)
            return rows

        assert asyncio.run(main()) == [(x,) for x in range(1, 251)]


def test_slow_source_streams_before_a_batch_is_full() -> None:
    source = Tracked(200, delay=0.01)

    async def main() -> int:
        async for _ in unstall.iterate(source, batch=200):
            return source.produced  # how many items existed when the first one arrived
        raise AssertionError("no items")

    assert asyncio.run(main()) < 200


def test_exception_comes_after_the_items_before_it() -> None:
    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk on fire")

    async def main() -> list[int]:
        seen: list[int] = []
        with pytest.raises(OSError, match="disk on fire") as info:
            async for x in unstall.iterate(failing()):
                seen.append(x)
        names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert "failing" in names
        return seen

    assert asyncio.run(main()) == [1, 2]


def test_break_closes_the_generator_in_a_worker() -> None:
    source = Tracked(10_000)

    async def main() -> None:
        async for x in unstall.iterate(iter(source), batch=10):
            if x == 15:
                break

    asyncio.run(main())
    assert wait_until(lambda: source.closed_in is not None)
    assert source.closed_in is not None
    assert source.closed_in.startswith("unstall-worker-")
    assert source.produced < 10_000


def test_aclose_and_async_with_close_the_generator() -> None:
    first, second = Tracked(1000), Tracked(1000)

    async def main() -> None:
        it = unstall.iterate(iter(first), batch=5)
        assert await it.__anext__() == 0
        await it.aclose()
        assert first.closed_in is not None
        with pytest.raises(StopAsyncIteration):
            await it.__anext__()
        async with unstall.iterate(iter(second), batch=5) as it2:
            assert await it2.__anext__() == 0
        assert second.closed_in is not None

    asyncio.run(main())


def test_cancel_closes_the_generator_after_the_running_batch() -> None:
    source = Tracked(10_000, delay=0.005)

    async def consume(it: AsyncIterator[int]) -> None:
        async for _ in it:
            pass

    async def main() -> None:
        it = unstall.iterate(iter(source), batch=1000)
        task = asyncio.ensure_future(consume(it))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(StopAsyncIteration):  # still referenced here, but closed
            await it.__anext__()

    asyncio.run(main())
    assert wait_until(lambda: source.closed_in is not None)
    assert source.produced < 10_000


def test_the_loop_keeps_ticking() -> None:
    source = Tracked(30, delay=0.01)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    async def main() -> list[int]:
        task = asyncio.ensure_future(ticker())
        items = [x async for x in unstall.iterate(source, batch=8)]
        task.cancel()
        return items

    assert asyncio.run(main()) == list(range(30))
    assert ticks >= 5


async def _agen() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((5,), {}, TypeError, "needs an iterable"),
        ((None,), {}, TypeError, "needs an iterable"),
        ((_agen(),), {}, TypeError, "async iterable"),
        (([1],), {"batch": 0}, ValueError, "batch must be at least 1"),
        (([1],), {"batch": "8"}, TypeError, "batch must be an int"),
        (([1],), {"on": "thread"}, TypeError, "ThreadPool"),
    ],
)
def test_bad_input(args: tuple[Any, ...], kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        unstall.iterate(*args, **kwargs)
