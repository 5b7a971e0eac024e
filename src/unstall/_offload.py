"""STUB (issue #2): offload."""

from __future__ import annotations

from typing import Any


def offload(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError
