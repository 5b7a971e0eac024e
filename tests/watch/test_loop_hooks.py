"""Noticing loops that start and stop, in any thread, of any kind."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

import unstall
from helpers import run_python
from unstall._watch import loop_hooks

Seen = list[tuple[str, bool, str]]


@pytest.fixture
def seen() -> Iterator[Seen]:
    events: Seen = []

    def listener(loop: asyncio.AbstractEventLoop, started: bool) -> None:
        events.append((type(loop).__name__, started, threading.current_thread().name))

    loop_hooks.install()
    loop_hooks.set_listener(listener)
    try:
        yield events
    finally:
        loop_hooks.set_listener(None)


async def nothing() -> None:
    await asyncio.sleep(0)


def test_asyncio_run_in_a_thread_is_seen_start_and_stop(seen: Seen) -> None:
    thread = threading.Thread(target=asyncio.run, args=(nothing(),), name="t1")
    thread.start()
    thread.join()
    mine = [e for e in seen if e[2] == "t1"]
    assert mine[0] == ("_UnixSelectorEventLoop", True, "t1")
    # asyncio.run runs the loop again to shut down: every start has its stop.
    assert [e[1] for e in mine] == [True, False] * (len(mine) // 2)
    assert len(mine) >= 2


def test_uvloop_is_seen(seen: Seen) -> None:
    uvloop.run(nothing())
    assert ("Loop", True, threading.current_thread().name) in seen
    assert ("Loop", False, threading.current_thread().name) in seen


def test_hand_made_loop_is_seen(seen: Seen) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(nothing())
    finally:
        loop.close()
    assert seen[:2] == [
        ("_UnixSelectorEventLoop", True, "MainThread"),
        ("_UnixSelectorEventLoop", False, "MainThread"),
    ]


def test_a_failing_listener_does_not_break_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="unstall")  # warned once per process, then DEBUG

    def broken(loop: asyncio.AbstractEventLoop, started: bool) -> None:
        raise RuntimeError("hook bug")

    loop_hooks.install()
    loop_hooks.set_listener(broken)
    try:
        assert asyncio.run(asyncio.sleep(0, result=42)) == 42
    finally:
        loop_hooks.set_listener(None)
    assert "hook bug" in caplog.text


def test_without_listener_the_hook_only_forwards() -> None:
    loop_hooks.install()
    loop_hooks.set_listener(None)
    assert asyncio.events._set_running_loop is loop_hooks._set_running_loop
    assert asyncio.run(asyncio.sleep(0, result="ok")) == "ok"


def test_running_loops_finds_a_loop_running_in_another_thread() -> None:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not loop.is_running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert any(found is loop for found in loop_hooks.running_loops())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    assert all(found is not loop for found in loop_hooks.running_loops())


def test_starting_a_watcher_never_walks_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    walks: list[int] = []
    real = gc.get_objects

    def counting(*args: Any) -> list[Any]:
        walks.append(1)
        return real(*args)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="heap-walk-check")
    thread.start()
    monkeypatch.setattr(gc, "get_objects", counting)
    try:
        deadline = time.monotonic() + 10
        while not loop.is_running():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for _ in range(20):
            with unstall.watch(threshold=0.1, log=False):
                assert any(found is loop for found in loop_hooks.running_loops())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    assert walks == []


EARLY_LOOP = """
import asyncio, gc, json, threading, time, weakref

class Thing:
    pass

thing = Thing()
dead = weakref.proxy(thing)  # isinstance() on it raises ReferenceError once thing is gone
del thing
keep = [dead]

loop = asyncio.new_event_loop()
thread = threading.Thread(target=loop.run_forever, name="early")
thread.start()
while not loop.is_running():
    time.sleep(0.01)

def no_heap_walk(*args):
    raise AssertionError("unstall walked the heap")

gc.get_objects = no_heap_walk
import unstall  # the hook comes after this loop started

watcher = unstall.watch(threshold=0.1, log=False)

async def block():
    await asyncio.sleep(0.05)
    time.sleep(0.3)

asyncio.run_coroutine_threadsafe(block(), loop).result()
time.sleep(0.05)
watcher.stop()
loop.call_soon_threadsafe(loop.stop)
thread.join()
print(json.dumps([[s.thread, s.call] for s in watcher.stalls]))
"""


def test_a_loop_running_before_unstall_was_imported_is_found_from_the_stacks(
    tmp_path: Path,
) -> None:
    script = tmp_path / "early.py"
    script.write_text(EARLY_LOOP)
    proc = run_python([str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [["early", "time.sleep"]]
