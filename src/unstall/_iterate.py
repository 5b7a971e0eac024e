"""STUB (issue #2): iterate."""

from __future__ import annotations

from typing import Any


def iterate(iterable: Any, *, batch: int = 64) -> Any:
    raise NotImplementedError
