"""STUB (issue #2): run and run_sync on the loop that offloaded the current call."""

from __future__ import annotations

from typing import Any


def run(async_fn: Any, *args: Any) -> Any:
    raise NotImplementedError


def run_sync(func: Any, *args: Any) -> Any:
    raise NotImplementedError
