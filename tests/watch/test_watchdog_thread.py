"""The one watchdog thread: shared by watchers in turn, gone once none is left for a while."""

from __future__ import annotations

import threading

import pytest

import unstall
from helpers import SLACK_S, wait_until
from unstall._watch import watchdog as _watchdog


def watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "unstall-watchdog"]


def test_watchers_in_turn_share_one_thread_which_ends_when_none_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_watchdog, "LINGER_S", 0.3)
    with unstall.watch(threshold=0.1, log=False):
        (first,) = watchdogs()
    for _ in range(20):  # one watcher per test phase, as the pytest plugin does
        with unstall.watch(threshold=0.1, log=False):
            assert watchdogs() == [first]
    assert wait_until(lambda: not first.is_alive(), timeout=0.3 + SLACK_S)
    with unstall.watch(threshold=0.1, log=False):
        (again,) = watchdogs()
        assert again is not first
