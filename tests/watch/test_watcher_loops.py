"""unstall.watch() with no loop: every loop that runs, in any thread, of any kind (issue 4)."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvloop

import unstall
from fixtures import blocking
from fixtures.blocking import line_of
from helpers import SRC
from unstall import Stall, Watcher
from unstall._watch.probe import describe_loop

THRESHOLD = 0.1


async def block_once(seconds: float, truths: list[float]) -> None:
    await asyncio.sleep(0.03)
    truths.append(blocking.sleep_block(seconds))
    await asyncio.sleep(0.03)


def watch_all(run: Callable[[list[float]], None]) -> tuple[list[Stall], list[float]]:
    """Watch every loop while ``run`` runs; return the stalls of this thread's loops."""
    truths: list[float] = []
    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    try:
        run(truths)
    finally:
        watcher.stop()
    me = threading.get_ident()
    return [s for s in watcher.stalls if s.thread_id == me], truths


def check_each(stalls: list[Stall], truths: list[float]) -> None:
    assert len(stalls) == len(truths), stalls
    for stall, truth in zip(stalls, truths, strict=True):
        assert abs(stall.duration_s - truth) <= 0.1 * truth, (stall.duration_s, truth)
        assert stall.culprit is not None
        assert (stall.culprit.file, stall.culprit.line) == (blocking.HERE, line_of("sleep"))
        assert stall.call == "time.sleep"


def test_asyncio_run_and_runner() -> None:
    def run(truths: list[float]) -> None:
        asyncio.run(block_once(0.3, truths))
        with asyncio.Runner() as runner:
            runner.run(block_once(0.3, truths))

    stalls, truths = watch_all(run)
    check_each(stalls, truths)
    assert stalls[0].loop != stalls[1].loop


def test_hand_made_loop_with_run_until_complete() -> None:
    def run(truths: list[float]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(block_once(0.3, truths))
            loop.run_until_complete(block_once(0.3, truths))  # run again: still watched
        finally:
            loop.close()

    stalls, truths = watch_all(run)
    check_each(stalls, truths)
    assert stalls[0].loop == stalls[1].loop


def test_uvloop_run_new_event_loop_and_install() -> None:
    def run(truths: list[float]) -> None:
        uvloop.run(block_once(0.3, truths))
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(block_once(0.3, truths))
        finally:
            loop.close()
        policy = asyncio.get_event_loop_policy()
        try:
            uvloop.install()
            asyncio.run(block_once(0.3, truths))
        finally:
            asyncio.set_event_loop_policy(policy)

    stalls, truths = watch_all(run)
    check_each(stalls, truths)
    assert all(s.loop.startswith("Loop@") for s in stalls)


def test_uvloop_inside_a_coroutine() -> None:
    async def main() -> tuple[Watcher, list[float]]:
        truths: list[float] = []
        async with unstall.watch(threshold=THRESHOLD, log=False) as watcher:
            await block_once(0.4, truths)
        return watcher, truths

    watcher, truths = uvloop.run(main())
    check_each(watcher.stalls, truths)


def test_anyio_run_on_asyncio() -> None:
    def run(truths: list[float]) -> None:
        anyio.run(block_once, 0.3, truths, backend="asyncio")

    stalls, truths = watch_all(run)
    check_each(stalls, truths)


def test_several_loops_in_several_threads_and_a_healthy_one_reports_nothing() -> None:
    truths: dict[str, float] = {}
    ticks: list[float] = []

    def sick(name: str, seconds: float, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        async def main() -> None:
            await asyncio.sleep(0.1)
            truths[name] = blocking.sleep_block(seconds)
            await asyncio.sleep(0.05)

        loop = factory()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def healthy() -> None:
        async def main() -> None:
            for _ in range(40):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.02)

        asyncio.run(main())

    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    threads = [
        threading.Thread(target=sick, args=("a", 0.3, asyncio.new_event_loop), name="sick-a"),
        threading.Thread(target=sick, args=("b", 0.4, uvloop.new_event_loop), name="sick-b"),
        threading.Thread(target=healthy, name="healthy"),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        watcher.stop()
    mine = [s for s in watcher.stalls if s.thread in ("sick-a", "sick-b", "healthy")]
    by_thread = {s.thread: s for s in mine}
    assert len(mine) == 2, mine
    assert set(by_thread) == {"sick-a", "sick-b"}
    for name in ("a", "b"):
        stall = by_thread[f"sick-{name}"]
        assert abs(stall.duration_s - truths[name]) <= 0.1 * truths[name]
        assert stall.culprit is not None
        assert stall.culprit.line == line_of("sleep")
    assert by_thread["sick-a"].loop.startswith("_UnixSelectorEventLoop@")
    assert by_thread["sick-b"].loop.startswith("Loop@")
    assert len({s.loop for s in mine}) == 2
    assert len(ticks) == 40
    report = watcher.report()
    assert {"sick-a", "sick-b", "healthy"} <= {info.thread for info in report.loops}


def test_a_loop_already_running_in_another_thread_is_found() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="early-loop")
    thread.start()
    try:
        time.sleep(0.05)
        watcher = unstall.watch(threshold=THRESHOLD, log=False)
        try:
            time.sleep(0.1)
            truths: list[float] = []
            asyncio.run_coroutine_threadsafe(block_once(0.3, truths), loop).result()
            time.sleep(0.05)
        finally:
            watcher.stop()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    stalls = [s for s in watcher.stalls if s.thread == "early-loop"]
    assert len(stalls) == 1, watcher.stalls
    assert abs(stalls[0].duration_s - truths[0]) <= 0.1 * truths[0]


def test_stopped_watcher_leaves_loops_alone() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="long-lived")
    thread.start()
    try:
        watcher = unstall.watch(loop, threshold=THRESHOLD, log=False)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result()
        selector = loop._selector  # type: ignore[attr-defined]
        assert "select" in vars(selector)  # the probe
        watcher.stop()
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result()
        assert "select" not in vars(selector)  # the loop's own again
        truths: list[float] = []
        asyncio.run_coroutine_threadsafe(block_once(0.2, truths), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    assert watcher.stalls == []


SCRIPT = """
import asyncio, json, sys, time
{imports}
import unstall

def slow():
    time.sleep(0.3)  # the culprit

async def main():
    await asyncio.sleep(0.05)
    slow()
    await asyncio.sleep(0.05)

watcher = unstall.watch(threshold=0.1, log=False)
{run}
watcher.stop()
print(json.dumps([[s.loop, s.culprit.line, s.call, s.duration_s] for s in watcher.stalls]))
"""


@pytest.mark.parametrize(
    ("imports", "run"),
    [
        ("import uvloop", "uvloop.run(main())"),  # uvloop imported before the hook
        ("", "import uvloop\nuvloop.run(main())"),  # and after it
        ("import uvloop", "loop = uvloop.new_event_loop()\nloop.run_until_complete(main())"),
    ],
    ids=["uvloop-first", "uvloop-after", "uvloop-hand-made"],
)
def test_uvloop_found_whether_imported_before_or_after(
    imports: str, run: str, tmp_path: Path
) -> None:
    code = textwrap.dedent(SCRIPT).format(imports=imports, run=run)
    script = tmp_path / "app.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    stalls: list[Any] = json.loads(proc.stdout)
    assert len(stalls) == 1, stalls
    loop, line, call, duration = stalls[0]
    assert loop.startswith("Loop@")
    assert line == code.splitlines().index("    time.sleep(0.3)  # the culprit") + 1
    assert call == "time.sleep"
    assert 0.27 <= duration < 1.5  # a late wake-up on a busy machine lengthens it


def test_a_stopped_loop_is_not_kept_alive_but_stays_in_the_report() -> None:
    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    try:
        loop = asyncio.new_event_loop()
        loop.run_until_complete(asyncio.sleep(0.06))
        loop.close()
        loop_id = describe_loop(loop)
        ref = weakref.ref(loop)
        del loop
        deadline = time.monotonic() + 10
        while ref() is not None:
            assert time.monotonic() < deadline, "the watcher keeps a stopped loop alive"
            time.sleep(0.05)
            gc.collect()
    finally:
        watcher.stop()
    assert loop_id in [info.id for info in watcher.report().loops]


@pytest.mark.parametrize(
    "factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_a_hang_is_reported_while_it_lasts(
    factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    release = threading.Event()
    hangs: list[Stall] = []
    seen_twice = threading.Event()

    def on_hang(stall: Stall) -> None:
        hangs.append(stall)
        if len(hangs) >= 2:
            seen_twice.set()

    async def stuck() -> None:
        await asyncio.sleep(0.05)
        release.wait()  # blocks the loop until the test lets go

    def thread_main() -> None:
        loop = factory()
        try:
            loop.run_until_complete(stuck())
        finally:
            loop.close()

    watcher = unstall.watch(threshold=THRESHOLD, on_hang=on_hang, log=False)
    thread = threading.Thread(target=thread_main, name="hung")
    thread.start()
    try:
        # Reported while still stuck: the loop never gets back to the watcher meanwhile.
        assert seen_twice.wait(15), hangs
        assert thread.is_alive()
    finally:
        release.set()
        thread.join()
        watcher.stop()
    mine = [h for h in hangs if h.thread == "hung"]
    assert all(h.ongoing for h in mine)
    assert all(h.culprit is not None and h.culprit.function == "stuck" for h in mine)
    assert all(h.call == "threading.Event.wait" for h in mine)
    assert mine[-1].duration_s > mine[0].duration_s
    (final,) = [s for s in watcher.stalls if s.thread == "hung"]
    assert not final.ongoing
    assert final.duration_s >= mine[-1].duration_s


LATE_UVLOOP = """
import asyncio, json, threading, time
import uvloop

loop = uvloop.new_event_loop()
thread = threading.Thread(target=loop.run_forever)
thread.start()
time.sleep(0.1)

import unstall  # the hook comes after this loop started: its stop is not announced

hangs = []
watcher = unstall.watch(loop, threshold=0.1, on_hang=hangs.append, log=False)

async def block():
    time.sleep(0.3)

asyncio.run_coroutine_threadsafe(block(), loop).result()
time.sleep(0.1)
loop.call_soon_threadsafe(loop.stop)
thread.join()
stopped_at = len(hangs)
time.sleep(0.6)  # a stopped loop's missing heartbeat is not a hang
watcher.stop()
loop.close()
print(json.dumps({"stalls": len(watcher.stalls), "hangs_after_stop": len(hangs) - stopped_at}))
"""


def test_a_uvloop_loop_started_before_the_hook_is_watched_and_its_stop_is_no_hang(
    tmp_path: Path,
) -> None:
    script = tmp_path / "late.py"
    script.write_text(LATE_UVLOOP)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"stalls": 1, "hangs_after_stop": 0}


def test_a_loop_that_stopped_before_the_watcher_is_not_in_its_report() -> None:
    async def brief() -> None:
        await asyncio.sleep(0.05)

    first = unstall.watch(threshold=0.1, log=False)
    try:
        thread = threading.Thread(target=asyncio.run, args=(brief(),), name="gone-loop")
        thread.start()
        thread.join(30)
        time.sleep(0.1)  # the watchdog forgets the stopped loop
    finally:
        first.stop()
    second = unstall.watch(threshold=0.1, log=False)
    try:
        asyncio.run(asyncio.sleep(0.1))
    finally:
        second.stop()
    threads = [info.thread for info in second.report().loops]
    assert "gone-loop" not in threads
    assert threading.current_thread().name in threads
