"""DaskTarget: a real dask.distributed LocalCluster with worker processes."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

distributed = pytest.importorskip("distributed")

import unstall  # noqa: E402
from unstall._offload.dask import DaskTarget  # noqa: E402

pytestmark = pytest.mark.slow  # the cluster takes seconds to start


def add(a: int, b: int = 0) -> int:
    return a + b


def fail(message: str) -> None:
    raise ValueError(message)


def uses_key(key: str) -> str:
    return key.upper()


def nap_then_touch(seconds: float, path: str) -> str:
    time.sleep(seconds)
    Path(path).write_text("ran")
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster) as c:
        yield c


def test_rejects_non_clients() -> None:
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        DaskTarget(object())


@pytest.mark.asyncio
async def test_sync_client_round_trip(client: Any) -> None:
    target = DaskTarget(client)
    assert await target.submit(add, (1,), {"b": 2}) == 3
    assert await target.submit(os.getpid, (), {}) != os.getpid()  # ran in a worker process
    assert await target.submit(uses_key, (), {"key": "k"}) == "K"  # not Client.submit's key


@pytest.mark.asyncio
async def test_sync_client_exception_has_remote_frames(client: Any) -> None:
    with pytest.raises(ValueError, match="on the cluster") as info:
        await DaskTarget(client).submit(fail, ("on the cluster",), {})
    assert any(entry.name == "fail" for entry in info.traceback)


@pytest.mark.asyncio
async def test_offload_on_sync_client(client: Any) -> None:
    remote_add = unstall.offload(on=client, timeout=30)(add)
    threads_before = threading.active_count()
    assert await asyncio.gather(*(remote_add(i, 1) for i in range(30))) == list(range(1, 31))
    assert threading.active_count() <= threads_before + 3  # no thread per call


@pytest.mark.asyncio
async def test_sync_client_cancelled_queued_call_never_runs(client: Any, tmp_path: Path) -> None:
    target = DaskTarget(client)
    first = asyncio.create_task(target.submit(nap_then_touch, (0.5, str(tmp_path / "a")), {}))
    await asyncio.sleep(0.1)
    queued = asyncio.create_task(target.submit(nap_then_touch, (0, str(tmp_path / "b")), {}))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await first
    await target.submit(add, (0,), {})  # one worker thread: everything before has run
    assert not (tmp_path / "b").exists()


@pytest.mark.asyncio
async def test_sync_client_timeout_returns_promptly(client: Any) -> None:
    slow = unstall.offload(on=client, timeout=0.2)(time.sleep)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await slow(2.5)
    assert time.monotonic() - started < 2.0  # did not wait for the task
    assert await DaskTarget(client).submit(add, (1, 1), {}) == 2


@pytest.mark.asyncio
async def test_sync_client_cancel_wait(client: Any, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    call = asyncio.create_task(
        DaskTarget(client).submit(nap_then_touch, (0.4, str(marker)), {}, cancel="wait")
    )
    await asyncio.sleep(0.15)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert marker.exists()


@pytest.mark.asyncio
async def test_async_client(cluster: Any) -> None:
    async with distributed.Client(cluster.scheduler_address, asynchronous=True) as client:
        target = DaskTarget(client)
        assert await target.submit(add, (20,), {"b": 22}) == 42
        with pytest.raises(ValueError, match="async boom"):
            await target.submit(fail, ("async boom",), {})

        remote_add = unstall.offload(on=client, limit=4)(add)
        threads_before = threading.active_count()
        results = await asyncio.gather(*(remote_add(i, i) for i in range(30)))
        assert results == [2 * i for i in range(30)]
        assert threading.active_count() <= threads_before + 3  # no thread per call

        slow = unstall.offload(on=client, timeout=0.2)(time.sleep)
        with pytest.raises(TimeoutError):
            await slow(0.5)


@pytest.mark.asyncio
async def test_async_client_used_from_another_loop_is_bridged(cluster: Any) -> None:
    async def use(client: Any) -> int:
        assert not client.asynchronous  # seen from this loop, the client is remote
        return await DaskTarget(client).submit(add, (1, 2), {})

    async with distributed.Client(cluster.scheduler_address, asynchronous=True) as client:
        assert await asyncio.to_thread(asyncio.run, use(client)) == 3
