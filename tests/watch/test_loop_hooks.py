"""Noticing loops that start and stop, in any thread, of any kind."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import uvloop

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
