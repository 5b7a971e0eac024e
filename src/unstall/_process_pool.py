"""STUB (issue #6): ProcessPool, to_process, WorkerDiedError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WorkerDiedError(RuntimeError):
    pass


class ProcessPool:
    def __init__(self, max_workers: int | None = None) -> None:
        raise NotImplementedError


async def to_process(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    raise NotImplementedError
