"""ProcessPool: real worker processes, killed on cancel and timeout, isolated from crashes."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import unstall
from helpers import SRC
from unstall._offload.process_pool import ProcessPool, RemoteTraceback, WorkerDiedError

# -- functions run in the workers ----------------------------------------------------------


def add(a: int, b: int = 0) -> int:
    return a + b


def pid() -> int:
    return os.getpid()


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def nap_then_touch(seconds: float, path: str) -> int:
    time.sleep(seconds)
    Path(path).write_text("ran")
    return os.getpid()


def touch(path: str) -> None:
    Path(path).write_text("ran")


def spawn_child_and_hang(path: str) -> None:
    child = subprocess.Popen(["sleep", "60"])
    Path(path).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(60)


def fail(message: str) -> None:
    raise ValueError(message)


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    ctypes.string_at(0)


def make_lock() -> object:
    return threading.Lock()


def system_exit() -> None:
    raise SystemExit(4)


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable_exception() -> None:
    raise NeedsTwoArgs(1, 2)


# -- helpers -------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(*pids: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if not gone(p)]}"
        await asyncio.sleep(0.02)


async def read_pids(path: Path, within: float = 20.0) -> list[int]:
    deadline = time.monotonic() + within
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the call never started"
        await asyncio.sleep(0.02)
    return [int(p) for p in path.read_text().split()]


@pytest.fixture(scope="module")
def pool() -> object:
    with ProcessPool(2) as p:
        yield p


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_round_trip_args_and_kwargs(pool: ProcessPool) -> None:
    assert await pool.submit(add, (1,), {"b": 2}) == 3
    assert await pool.submit(pid, (), {}) != os.getpid()


@pytest.mark.asyncio
async def test_lambdas_and_closures_are_sent_with_cloudpickle(pool: ProcessPool) -> None:
    offset = 10

    def closure(x: int) -> int:
        return x + offset

    assert await pool.submit(lambda x: x * 2, (21,), {}) == 42
    assert await pool.submit(closure, (5,), {}) == 15


@pytest.mark.asyncio
async def test_large_payloads_round_trip(pool: ProcessPool) -> None:
    blob = os.urandom(8 << 20)
    assert await pool.submit(bytes, (blob,), {}) == blob


@pytest.mark.asyncio
async def test_workers_are_reused_and_bounded(pool: ProcessPool) -> None:
    first = await pool.submit(pid, (), {})
    assert await pool.submit(pid, (), {}) == first  # hot worker reused
    pids = await asyncio.gather(*(pool.submit(nap, (0.05,), {}) for _ in range(8)))
    assert len(set(pids)) <= 2
    assert first not in (os.getpid(), None)


@pytest.mark.asyncio
async def test_loop_keeps_running_during_cpu_work(pool: ProcessPool) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await pool.submit(sum, (range(3_000_000),), {})
    task.cancel()
    assert ticks >= 2


# -- errors from the call --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_exception_reraised_with_remote_traceback(pool: ProcessPool) -> None:
    with pytest.raises(ValueError, match="bad input") as info:
        await pool.submit(fail, ("bad input",), {})
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail" in cause.text
    assert "ValueError: bad input" in cause.text


@pytest.mark.asyncio
async def test_exception_that_cannot_be_unpickled_is_described(pool: ProcessPool) -> None:
    with pytest.raises(RuntimeError, match=r"raised NeedsTwoArgs\('1/2'\) in the worker") as info:
        await pool.submit(raise_unpicklable_exception, (), {})
    assert "NeedsTwoArgs: 1/2" in str(info.value.__cause__)


@pytest.mark.asyncio
async def test_system_exit_in_a_call_does_not_kill_the_worker(pool: ProcessPool) -> None:
    before = await pool.submit(pid, (), {})
    with pytest.raises(RuntimeError, match="SystemExit"):
        await pool.submit(system_exit, (), {})
    assert not gone(before)


@pytest.mark.asyncio
async def test_unpicklable_argument_fails_at_the_call(pool: ProcessPool) -> None:
    with pytest.raises(TypeError, match=r"cannot send argument 1 of .*add .*lock"):
        await pool.submit(add, (1, threading.Lock()), {})
    with pytest.raises(TypeError, match="keyword argument 'b'"):
        await pool.submit(add, (1,), {"b": threading.Lock()})
    assert await pool.submit(add, (1, 2), {}) == 3


@pytest.mark.asyncio
async def test_unpicklable_function_fails_at_the_call(pool: ProcessPool) -> None:
    lock = threading.Lock()

    def holds_lock() -> bool:
        return lock.locked()

    with pytest.raises(TypeError, match=r"cannot send the function .*holds_lock"):
        await pool.submit(holds_lock, (), {})
    assert await pool.submit(add, (2, 2), {}) == 4


@pytest.mark.asyncio
async def test_unpicklable_result_fails_that_call_only(pool: ProcessPool) -> None:
    worker = await pool.submit(pid, (), {})
    with pytest.raises(TypeError, match=r"result of .*make_lock .*cannot be sent back"):
        await pool.submit(make_lock, (), {})
    assert await pool.submit(pid, (), {}) == worker  # same worker, still healthy


# -- crash isolation -----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (exit_now, "died with exit code 3"),
        (kill_self, "died with signal SIGKILL"),
        (segfault, "died with signal SIGSEGV"),
    ],
)
async def test_a_dying_worker_fails_only_its_call(
    pool: ProcessPool, func: object, expected: str
) -> None:
    args = (3,) if func is exit_now else ()
    neighbour = asyncio.create_task(pool.submit(nap, (0.5,), {}))
    with pytest.raises(WorkerDiedError, match=f"worker process \\d+ {expected} while running") as e:
        await pool.submit(func, args, {})  # type: ignore[arg-type]
    assert func.__name__ in str(e.value)  # type: ignore[attr-defined]
    if func is exit_now:
        assert e.value.exitcode == 3
        assert e.value.signal is None
    else:
        assert e.value.signal is not None
        assert e.value.exitcode == -e.value.signal
    assert e.value.pid is not None
    await wait_gone(e.value.pid)
    assert isinstance(await neighbour, int)  # the other call was unaffected
    assert await pool.submit(add, (1, 1), {}) == 2  # and the pool healed


def test_worker_died_error_is_a_runtime_error() -> None:
    assert issubclass(unstall.WorkerDiedError, RuntimeError)
    err = WorkerDiedError("x", pid=1, exitcode=-signal.SIGTERM)
    assert err.signal is signal.SIGTERM


# -- cancellation --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_timeout_kills_the_worker_and_its_children(pool: ProcessPool, tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    call = asyncio.create_task(
        asyncio.wait_for(pool.submit(spawn_child_and_hang, (str(marker),), {}), 60)
    )
    worker, child = await read_pids(marker)
    started = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - started < 5.0  # returned promptly (the call sleeps 60 s)
    await wait_gone(worker, child)


@pytest.mark.asyncio
async def test_wait_for_timeout_kills_running_call(pool: ProcessPool, tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    other = asyncio.create_task(pool.submit(nap, (0.3,), {}))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await pool.submit(spawn_child_and_hang, (str(marker),), {})
    await wait_gone(*await read_pids(marker))
    assert isinstance(await other, int)
    assert await pool.submit(add, (5, 5), {}) == 10


@pytest.mark.asyncio
async def test_cancelled_queued_call_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with ProcessPool(1) as single:
        first = asyncio.create_task(single.submit(nap, (0.5,), {}))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(single.submit(touch, (str(marker),), {}))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        worker = await first
        assert await single.submit(pid, (), {}) == worker  # not killed: it was not running
        assert not marker.exists()


@pytest.mark.asyncio
async def test_cancel_wait_lets_the_call_finish(pool: ProcessPool, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    call = asyncio.create_task(pool.submit(nap_then_touch, (0.4, str(marker)), {}, cancel="wait"))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert marker.exists()  # CancelledError came only after the call had finished


@pytest.mark.asyncio
async def test_cancel_wait_cancelled_again_kills(pool: ProcessPool, tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    call = asyncio.create_task(pool.submit(spawn_child_and_hang, (str(marker),), {}, cancel="wait"))
    pids = await read_pids(marker)
    call.cancel()
    await asyncio.sleep(0.1)
    assert not call.done()  # still waiting for the call
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_gone(*pids)


@pytest.mark.asyncio
async def test_many_mixed_cancels_leave_the_pool_consistent(pool: ProcessPool) -> None:
    tasks = [asyncio.create_task(pool.submit(nap, (0.02 * (i % 5),), {})) for i in range(20)]
    await asyncio.sleep(0.05)
    for task in tasks[::3]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, int | asyncio.CancelledError) for r in results)
    assert pool._slots <= 2
    assert len(await asyncio.gather(*(pool.submit(pid, (), {}) for _ in range(4)))) == 4


# -- lifecycle -----------------------------------------------------------------------------


def test_shutdown_stops_every_worker() -> None:
    async def main() -> list[int]:
        with ProcessPool(2, name="unstall-shutdown-test") as p:
            pids = await asyncio.gather(*(p.submit(nap, (0.1,), {}) for _ in range(2)))
        with pytest.raises(RuntimeError, match="shut down"):
            await p.submit(pid, (), {})
        return pids

    pids = asyncio.run(main())
    assert all(gone(p) for p in pids)
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert not children & set(pids)


@pytest.mark.asyncio
async def test_shutdown_fails_running_calls() -> None:
    p = ProcessPool(1)
    call = asyncio.create_task(p.submit(nap, (30,), {}))
    await asyncio.sleep(0.3)
    async with p:
        pass
    with pytest.raises(WorkerDiedError, match="shut down"):
        await call


@pytest.mark.asyncio
async def test_pool_serves_several_event_loops(pool: ProcessPool) -> None:
    def in_other_loop() -> int:
        return asyncio.run(pool.submit(add, (20, 22), {}))

    assert await asyncio.to_thread(in_other_loop) == 42
    assert await pool.submit(add, (1, 2), {}) == 3


@pytest.mark.asyncio
async def test_loops_in_two_threads_share_a_pool_concurrently() -> None:
    with ProcessPool(2) as shared:

        async def burst(n: int) -> list[int]:
            calls = [asyncio.create_task(shared.submit(add, (i, 1), {})) for i in range(n)]
            for task in calls[::7]:
                task.cancel()
            done = await asyncio.gather(*calls, return_exceptions=True)
            return [r for r in done if isinstance(r, int)]

        other = asyncio.create_task(asyncio.to_thread(asyncio.run, burst(60)))
        mine = await burst(60)
        theirs = await other
        expected = [i + 1 for i in range(60) if i % 7]
        assert sorted(mine) == expected
        assert sorted(theirs) == expected
        assert await shared.submit(add, (1, 1), {}) == 2
        assert shared._slots <= 2


def test_uvloop_round_trip_and_kill(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")
    marker = tmp_path / "pids"

    async def main() -> None:
        with ProcessPool(1) as p:
            assert await p.submit(add, (1, 2), {}) == 3
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.0):
                    await p.submit(spawn_child_and_hang, (str(marker),), {})
            await wait_gone(*await read_pids(marker))
            assert await p.submit(add, (2, 3), {}) == 5

    uvloop.run(main())


def test_spawn_start_method() -> None:
    async def main() -> int:
        with ProcessPool(1, start_method="spawn") as p:
            return await p.submit(add, (40, 2), {})

    assert asyncio.run(main()) == 42


def test_forked_child_gets_a_fresh_pool(pool: ProcessPool) -> None:
    parent_worker = asyncio.run(pool.submit(pid, (), {}))
    asyncio.run(unstall.to_process(pid))  # the default pool has workers before the fork
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        with contextlib.suppress(BaseException):
            got = asyncio.run(pool.submit(pid, (), {}))
            fresh = asyncio.run(unstall.to_process(pid))  # the default pool, too
            code = 0 if parent_worker not in (got, fresh) else 2
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert asyncio.run(pool.submit(pid, (), {})) == parent_worker  # parent's worker intact


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ProcessPool(0)
    with pytest.raises(TypeError, match="must be an int"):
        ProcessPool("2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown start_method 'bogus'"):
        ProcessPool(start_method="bogus")
    with pytest.raises(TypeError, match="name must be a str"):
        ProcessPool(1, name=3)  # type: ignore[arg-type]


def test_clean_exit_leaves_no_processes_and_no_warnings(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        "import asyncio, os, sys\n"
        "import unstall._offload.process_pool as pp\n"
        "async def main():\n"
        "    pool = pp.default_process_pool()\n"
        "    pids = await asyncio.gather(*(pool.submit(os.getpid, (), {}) for _ in range(4)))\n"
        "    asyncio.create_task(pool.submit(__import__('time').sleep, (30,), {}))\n"
        "    await asyncio.sleep(0.2)\n"
        "    print(' '.join(map(str, set(pids))), flush=True)\n"
        "if __name__ == '__main__':\n"
        "    loop = asyncio.new_event_loop()\n"
        "    loop.run_until_complete(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert proc.returncode == 0, proc.stderr
    assert "leaked" not in proc.stderr
    assert "Traceback" not in proc.stderr
    pids = [int(p) for p in proc.stdout.split()]
    assert pids
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline
        time.sleep(0.05)


# -- through the public API: to_process, offload(on="process"), ProcessPool.run ------------


def interval(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@pytest.mark.asyncio
async def test_to_process_round_trip() -> None:
    assert await unstall.to_process(add, 1, b=2) == 3
    assert await unstall.to_process(lambda: os.getpid()) != os.getpid()


@pytest.mark.asyncio
async def test_to_process_rejects_bad_input() -> None:
    async def coro() -> None:
        pass

    with pytest.raises(TypeError):
        await unstall.to_process(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="await"):
        await unstall.to_process(coro)


@pytest.mark.asyncio
async def test_offload_process_timeout_kills(tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    hang = unstall.offload(on="process", timeout=1.0)(spawn_child_and_hang)
    with pytest.raises(TimeoutError):
        await hang(str(marker))
    await wait_gone(*await read_pids(marker))
    assert await unstall.to_process(add, 2, 3) == 5


@pytest.mark.asyncio
async def test_offload_process_timeout_with_cancel_wait(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    patient = unstall.offload(on="process", timeout=0.2, cancel="wait")(nap_then_touch)
    with pytest.raises(TimeoutError):
        await patient(0.6, str(marker))
    assert marker.exists()  # the call ran to its end before TimeoutError was raised


@pytest.mark.asyncio
async def test_offload_process_limit() -> None:
    one_at_a_time = unstall.offload(on="process", limit=1)(interval)
    spans = sorted(await asyncio.gather(*(one_at_a_time(0.1) for _ in range(3))))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.01  # never overlapping


@pytest.mark.asyncio
async def test_pool_run_and_offload_on_a_pool(pool: ProcessPool) -> None:
    assert await pool.run(add, 40, b=2) == 42
    double = unstall.offload(on=pool)(lambda x: x * 2)
    assert await double(21) == 42


def test_script_without_main_guard_gets_a_hint(tmp_path: Path) -> None:
    script = tmp_path / "noguard.py"
    script.write_text(
        "import asyncio, os\n"
        "import unstall._offload.process_pool as pp\n"
        "async def main():\n"
        "    try:\n"
        "        await pp.ProcessPool(1).submit(os.getpid, (), {})\n"
        "    except pp.WorkerDiedError as e:\n"
        "        print(e)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    assert "died with exit code 1 (before serving any call" in proc.stdout
    assert "if __name__ == '__main__':" in proc.stdout


@pytest.mark.asyncio
async def test_without_cloudpickle_a_lambda_error_says_how_to_fix_it(
    pool: ProcessPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unstall._offload.process_pool as pp

    monkeypatch.setattr(pp, "_cloudpickle", lambda: None)  # as if the [process] extra were missing
    with pytest.raises(
        TypeError, match=r"lambdas and closures need cloudpickle.*unstall\[process\]"
    ):
        await pool.submit(lambda: 1, (), {})
    assert await pool.submit(add, (1, 2), {}) == 3  # module-level functions still go by pickle


def test_worker_exits_quietly_when_its_parent_vanishes() -> None:
    """A reset connection (the parent died with data unread) ends the worker like EOF."""
    import socket

    from unstall._offload import process_worker

    parent, child = socket.socketpair()
    parent.sendall(b"unread")  # a short frame: the worker waits for more
    child.sendall(b"x")  # unread by the parent: its close resets the connection
    parent.close()
    try:
        assert process_worker._read_exact(child.fileno(), 8) is None
    finally:
        child.close()
