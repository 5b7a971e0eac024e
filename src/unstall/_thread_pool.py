"""STUB (owned by the thread-offload work, issue #2): ThreadPool, to_thread, cancelled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ThreadPool:
    def __init__(self, max_workers: int | None = None, *, name: str = "unstall-worker") -> None:
        raise NotImplementedError


async def to_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    raise NotImplementedError


def cancelled() -> bool:
    raise NotImplementedError
