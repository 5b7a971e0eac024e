"""ProcessPool capacity: sizing, worker hygiene, whole-tree kills, statistics, shutdown."""

from __future__ import annotations

import asyncio
import collections
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

import unstall
from helpers import SLACK_S, child_env
from unstall import ProcessPool
from unstall._offload.cpus import available_cpus, cgroup_cpu_limit

_leaked: list[bytes] = []


def pid() -> int:
    return os.getpid()


def leak(megabytes: int) -> int:
    _leaked.append(b"\x01" * (megabytes << 20))  # touched pages: resident memory
    return os.getpid()


def remember(path: str, value: str) -> None:
    with open(path, "a") as f:
        f.write(f"{value} {os.getpid()}\n")


def initialized() -> str:
    return os.environ.get("UNSTALL_TEST_INIT", "")


def set_env(value: str) -> None:
    os.environ["UNSTALL_TEST_INIT"] = value


def fail_init() -> None:
    raise ValueError("no model here")


def exit_in_init() -> None:
    os._exit(3)


def sleep_forever_in_a_grandchild(path: str, via: str) -> None:
    """Start ``sleep 1000`` (or a multiprocessing child), note its pid, then block."""
    if via == "popen":
        child_pid = subprocess.Popen(["sleep", "1000"]).pid
    else:
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(1000,))
        child.start()
        child_pid = child.pid
    Path(path).write_text(f"{os.getpid()} {child_pid}")
    time.sleep(60)


def start_sleep_and_return(path: str) -> int:
    """Leave ``sleep 1000`` running in the background and finish after a while."""
    child = subprocess.Popen(["sleep", "1000"])
    Path(path).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(0.5)
    return child.pid


def gone(p: int) -> bool:
    try:
        return psutil.Process(p).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(*pids: int) -> None:
    deadline = time.monotonic() + SLACK_S
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if not gone(p)]}"
        await asyncio.sleep(0.02)


async def read_pids(path: Path) -> list[int]:
    deadline = time.monotonic() + 2 * SLACK_S
    while not path.exists() or len(path.read_text().split()) < 2:
        assert time.monotonic() < deadline, "the call never started"
        await asyncio.sleep(0.02)
    return [int(p) for p in path.read_text().split()]


async def poll(predicate: object) -> bool:
    deadline = time.monotonic() + 2 * SLACK_S
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.02)
    return False


# -- size -----------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity")
def test_the_default_process_pools_size_follows_the_cpu_affinity() -> None:
    code = (
        "import asyncio, json, os, unstall\n"
        "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "async def main():\n"
        "    await unstall.to_process(os.getpid)\n"
        "    stats = unstall.pool_statistics()['process']\n"
        "    print(json.dumps([stats.max_workers, unstall.ProcessPool().max_workers]))\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [1, 1]
    assert ProcessPool().max_workers == available_cpus() <= len(os.sched_getaffinity(0))


def _fake_proc(root: Path, cgroup: str, mounts: str = "") -> None:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mounts").write_text(mounts)


def test_a_cgroup_v2_cpu_quota_caps_the_cpu_count(tmp_path: Path) -> None:
    _fake_proc(tmp_path, "0::/app/worker\n")
    (tmp_path / "sys/fs/cgroup/app/worker").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/app/cpu.max").write_text("150000 100000\n")
    (tmp_path / "sys/fs/cgroup/app/worker/cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2  # 1.5 CPUs, rounded up, from the parent cgroup
    assert available_cpus(tmp_path) == min(2, len(os.sched_getaffinity(0)))


def test_a_cgroup_v1_cpu_quota_caps_the_cpu_count(tmp_path: Path) -> None:
    mounts = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"
    _fake_proc(tmp_path, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n", mounts)
    base = tmp_path / "sys/fs/cgroup/cpu,cpuacct"  # the container sees its cgroup at root
    base.mkdir(parents=True)
    (base / "cpu.cfs_quota_us").write_text("100000\n")
    (base / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1
    assert available_cpus(tmp_path) == 1


def test_no_cgroup_quota_means_no_cap(tmp_path: Path) -> None:
    mounts = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
    _fake_proc(tmp_path, "1:cpu:/\n", mounts)
    (tmp_path / "sys/fs/cgroup/cpu").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cpu/cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "sys/fs/cgroup/cpu/cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "nothing") is None


# -- worker hygiene -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_worker_past_max_tasks_per_worker_is_replaced_and_no_call_is_lost() -> None:
    async with ProcessPool(2, max_tasks_per_worker=3, name="recycled") as pool:
        pids = await asyncio.gather(*(pool.run(pid) for _ in range(20)))
        stats = pool.statistics()
    per_worker = collections.Counter(pids)
    assert len(pids) == 20
    assert max(per_worker.values()) <= 3
    assert len(per_worker) >= 7
    assert stats.calls_completed == 20
    assert stats.worker_restarts == len(per_worker) - 2
    await wait_gone(*per_worker)


@pytest.mark.asyncio
async def test_a_worker_past_max_memory_per_worker_is_replaced_and_no_call_is_lost() -> None:
    async with ProcessPool(1, max_memory_per_worker=150 << 20, name="leaky") as pool:
        first = await pool.run(pid)
        assert await pool.run(pid) == first  # under the limit: kept
        leaker = await pool.run(leak, 200)
        assert leaker == first
        after = await asyncio.gather(*(pool.run(pid) for _ in range(5)))
        stats = pool.statistics()
    assert first not in after
    assert len(set(after)) == 1
    assert (stats.calls_completed, stats.worker_restarts) == (8, 1)
    await wait_gone(first)


@pytest.mark.asyncio
async def test_the_initializer_runs_once_per_worker(tmp_path: Path) -> None:
    log = tmp_path / "init"
    async with ProcessPool(
        2, initializer=remember, initargs=(str(log), "init"), max_tasks_per_worker=2
    ) as pool:
        pids = await asyncio.gather(*(pool.run(pid) for _ in range(6)))
    lines = log.read_text().split("\n")[:-1]
    inited = [int(line.split()[1]) for line in lines]
    assert sorted(inited) == sorted(set(pids))  # each worker once, every worker


@pytest.mark.asyncio
async def test_the_initializer_sets_up_state_the_calls_see() -> None:
    async with ProcessPool(1, initializer=set_env, initargs=("ready",)) as pool:
        assert await pool.run(initialized) == "ready"


@pytest.mark.asyncio
async def test_a_failing_initializer_is_a_clear_error_not_a_hang() -> None:
    async with ProcessPool(1, initializer=fail_init, name="bad-init") as pool:
        for _ in range(2):  # every attempt fails the same way; the pool does not wedge
            with pytest.raises(RuntimeError, match="initializer of ProcessPool 'bad-init'") as e:
                await asyncio.wait_for(pool.run(pid), 2 * SLACK_S)
            assert isinstance(e.value.__cause__, ValueError)
            assert "no model here" in str(e.value)
        assert pool.statistics().workers_alive == 0


@pytest.mark.asyncio
async def test_an_initializer_that_exits_the_worker_is_a_clear_error() -> None:
    async with ProcessPool(1, initializer=exit_in_init, name="exit-init") as pool:
        with pytest.raises(RuntimeError, match="initializer") as e:
            await asyncio.wait_for(pool.run(pid), 2 * SLACK_S)
        assert isinstance(e.value.__cause__, unstall.WorkerDiedError)


@pytest.mark.asyncio
async def test_prestart_starts_every_worker_before_the_first_call() -> None:
    async with ProcessPool(2, prestart=True, name="warm") as pool:
        assert await poll(lambda: pool.statistics().workers_idle == 2)
        pids = {await pool.run(pid) for _ in range(4)}
        assert pool.statistics().worker_restarts == 0
    assert len(pids) <= 2


@pytest.mark.asyncio
async def test_calls_made_while_prestarting_wait_for_the_prestarted_workers() -> None:
    async with ProcessPool(2, prestart=True, name="warming") as pool:
        pids = await asyncio.gather(*(pool.run(pid) for _ in range(6)))
        assert len(set(pids)) <= 2
        assert pool.statistics().calls_completed == 6


def test_bad_hygiene_arguments_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="max_tasks_per_worker must be at least 1"):
        ProcessPool(1, max_tasks_per_worker=0)
    with pytest.raises(TypeError, match="max_memory_per_worker must be an int"):
        ProcessPool(1, max_memory_per_worker=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initargs must be a tuple"):
        ProcessPool(1, initializer=print, initargs=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initargs were given without an initializer"):
        ProcessPool(1, initargs=(1,))
    with pytest.raises(TypeError, match=r"not callable|expected a callable"):
        ProcessPool(1, initializer=3)  # type: ignore[arg-type]

    async def coro() -> None: ...

    with pytest.raises(TypeError, match="async"):
        ProcessPool(1, initializer=coro)


# -- whole-tree kills -----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("via", ["popen", "multiprocessing"])
async def test_a_cancelled_call_that_spawned_sleep_1000_leaves_no_process_behind(
    tmp_path: Path, via: str
) -> None:
    marker = tmp_path / "pids"
    async with ProcessPool(1, name="tree") as pool:
        call = asyncio.ensure_future(pool.run(sleep_forever_in_a_grandchild, str(marker), via))
        worker, child = await read_pids(marker)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await wait_gone(worker, child)
        assert pool.statistics().calls_cancelled == 1


@pytest.mark.asyncio
async def test_a_timed_out_call_that_spawned_sleep_1000_leaves_no_process_behind(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pids"
    async with ProcessPool(1, name="tree-timeout") as pool:
        await pool.run(pid)  # a warm worker: the timeout is not spent starting one
        hang = unstall.offload(sleep_forever_in_a_grandchild, on=pool, timeout=3.0)
        with pytest.raises(TimeoutError):
            await hang(str(marker), "popen")
        await wait_gone(*await read_pids(marker))
        stats = pool.statistics()
        assert (stats.calls_timed_out, stats.calls_cancelled) == (1, 1)


@pytest.mark.asyncio
async def test_cancel_wait_lets_the_call_end_then_kills_what_it_started(tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    async with ProcessPool(1, name="tree-wait") as pool:
        call = asyncio.ensure_future(
            pool.submit(start_sleep_and_return, (str(marker),), {}, cancel="wait")
        )
        worker, child = await read_pids(marker)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert pool.statistics().calls_completed == 1  # it ran to its end
        await wait_gone(worker, child)
        assert await pool.run(pid) != worker  # a fresh worker took over


@pytest.mark.asyncio
async def test_shutdown_kills_running_calls_and_their_children_within_its_timeout(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "pids"
    pool = ProcessPool(1, name="tree-shutdown")
    call = asyncio.ensure_future(pool.run(sleep_forever_in_a_grandchild, str(marker), "popen"))
    worker, child = await read_pids(marker)
    start = time.monotonic()
    pool.shutdown(timeout=0.5)
    assert time.monotonic() - start < 2.0
    with pytest.raises(unstall.WorkerDiedError, match="shut down"):
        await call
    await wait_gone(worker, child)


def test_process_shutdown_rejects_bad_arguments() -> None:
    pool = ProcessPool(1)
    with pytest.raises(ValueError, match="cancel_queued=False"):
        pool.shutdown(cancel_queued=False)
    with pytest.raises(ValueError, match=">= 0"):
        pool.shutdown(timeout=-0.1)
    with pytest.raises(ValueError, match="needs wait=True"):
        pool.shutdown(wait=False, timeout=1)
    pool.shutdown(timeout=0)


# -- statistics -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_process_statistics_count_queued_and_completed_calls() -> None:
    async with ProcessPool(2, name="counted-procs") as pool:
        calls = [asyncio.ensure_future(pool.run(time.sleep, 0.3)) for _ in range(6)]
        assert await poll(lambda: pool.statistics().workers_busy == 2)
        during = pool.statistics()
        assert during.calls_queued == 4
        assert during.saturated
        await asyncio.gather(*calls)
        after = pool.statistics()
    assert (after.calls_completed, after.calls_queued, after.max_queued) == (6, 0, 4)
    assert sum(after.queue_wait_buckets) == 6
    assert after.max_queue_wait_s >= 0.3
    assert (after.name, after.kind, after.workers_busy) == ("counted-procs", "process", 0)
