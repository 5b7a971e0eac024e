"""A test suite's stalls, carried from pytest-xdist's workers to the controller's summary.

A failing test's report carries its stalls as plain data in ``user_properties`` (which
xdist sends from the worker to the controller with the report), each stamped with the
worker's pid and xdist id; the controller lists them at the end of the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from unstall._report.format import format_duration, short_path
from unstall._report.records import Stall

__all__ = ["read_findings", "summary_lines", "worker_findings"]


def worker_findings(stalls: Iterable[tuple[Stall, float]]) -> list[dict[str, Any]]:
    """The stalls as plain data, naming this process (and its xdist worker id, if any).

    Each comes with ``origin``: the wall-clock start of the watcher its ``start_s`` counts
    from, so the controller can put it on its own clock.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return [
        {**s.with_updates(pid=os.getpid(), process=worker).to_dict(), "origin": origin}
        for s, origin in stalls
    ]


def read_findings(value: object) -> list[tuple[Stall, float]]:
    """The stalls (and origins) :func:`worker_findings` made; anything else is ignored."""
    if not isinstance(value, list):
        return []
    found = []
    for data in value:
        try:
            found.append((Stall.from_dict(data), float(data.get("origin", 0.0))))
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return found


def summary_lines(found: list[tuple[str, Stall]], root: str) -> list[str]:
    """``unstall: 2 tests stalled the event loop``, then one line per stall."""
    tests = len({nodeid for nodeid, _ in found})
    lines = [f"unstall: {tests} test{'s' if tests != 1 else ''} stalled the event loop"]
    for nodeid, stall in found:
        where = "an unknown place"
        if stall.culprit is not None:
            culprit = stall.culprit
            where = f"{short_path(culprit.file, root)}:{culprit.line} in {culprit.function}"
        who = f"pid {stall.pid}" if stall.pid is not None else ""
        if stall.process:
            who = f"{stall.process}, {who}"
        lines.append(
            f"  {nodeid}  {format_duration(stall.duration_s)} at {where}"
            + (f"  [{who}]" if who else "")
        )
    return lines
