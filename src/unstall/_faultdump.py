"""STUB: the faulthandler route (being written)."""

from __future__ import annotations

from dataclasses import dataclass

from unstall._sampler import Sample


@dataclass
class Dump:
    t: float

    def sample(self, thread_id: int) -> Sample | None:
        return None


def tick(now: float, active: bool) -> list[Dump]:
    return []


def disarm() -> None:
    pass
