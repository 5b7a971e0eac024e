"""STUB (issue #3): watch, Watcher."""

from __future__ import annotations

from typing import Any


class Watcher:
    pass


def watch(*args: Any, **kwargs: Any) -> Watcher:
    raise NotImplementedError
