"""STUB (issue #2): Limiter."""

from __future__ import annotations


class Limiter:
    def __init__(self, total_tokens: int) -> None:
        raise NotImplementedError
