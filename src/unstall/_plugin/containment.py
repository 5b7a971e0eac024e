"""unstall's own failures inside a test run stay unstall's: logged, noted, and the test goes on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def contained(where: str, lost: str) -> Iterator[None]:
    """unstall's own failure stays here: logged and noted, and the test goes on."""
    try:
        yield
    except pytest.UsageError:
        raise
    except Exception as exc:
        from unstall._report.incidents import contain

        contain(where, lost, exc)


def notes_since(since: float) -> list[str]:
    """What unstall failed to do since ``since`` (``time.monotonic()``), one line each."""
    try:
        from unstall._report.incidents import notes_since as read

        return read(since)
    except Exception:
        return []
