"""STUB (issue #5): strict mode."""

from __future__ import annotations

from typing import Any


class BlockingCallError(RuntimeError):
    pass


def strict(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError
