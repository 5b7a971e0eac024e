"""A :class:`~unstall.Report` as a Chrome Trace Event Format file, for Perfetto and chrome://tracing.

The object form is used (``{"traceEvents": [...], "displayTimeUnit": "ms"}``). Each loop
thread becomes a track named by a ``thread_name`` metadata event; each stall is a
complete event (``"ph": "X"``) on its thread's track, named ``function (file:line)``
after its culprit; each loop's lag is a counter (``"ph": "C"``). Times are microseconds
after the watcher started; the wall-clock start is kept in ``otherData``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unstall._stall import Report, Stall

__all__ = ["render_trace", "stall_name", "write_trace"]

PID = 1
"""Every event belongs to one process: the watched program."""


def _us(seconds: float) -> float:
    return round(seconds * 1_000_000, 3)


def stall_name(stall: Stall) -> str:
    """``function (file:line)`` for the culprit, with the file's base name."""
    if stall.culprit is None:
        return f"stall in {stall.call or 'unknown code'}"
    c = stall.culprit
    return f"{c.function} ({os.path.basename(c.file)}:{c.line})"


def _stall_event(stall: Stall) -> dict[str, Any]:
    culprit = stall.culprit
    args: dict[str, Any] = {
        "culprit": None if culprit is None else culprit.location,
        "code": None if culprit is None else culprit.code,
        "call": stall.call,
        "kind": stall.kind,
        "task": stall.task,
        "coro": stall.coro,
        "callback": stall.callback,
        "loop": stall.loop,
        "duration_ms": round(stall.duration_s * 1000, 3),
        "ongoing": stall.ongoing,
        "fix": stall.fix_hint,
        # innermost frame first, as tracebacks are read bottom-up in a viewer's args panel
        "stack": [f"{f.function} ({f.location})" for f in reversed(stall.stack)],
    }
    return {
        "name": ("HANG " if stall.ongoing else "") + stall_name(stall),
        "cat": f"stall,{stall.kind}" + (",ongoing" if stall.ongoing else ""),
        "ph": "X",
        "ts": _us(stall.start_s),
        "dur": _us(stall.duration_s),
        "pid": PID,
        "tid": stall.thread_id,
        "args": args,
    }


def _metadata(report: Report) -> list[dict[str, Any]]:
    program = " ".join(report.argv) or "python"
    events: list[dict[str, Any]] = [
        {
            "name": "process_name",
            "ph": "M",
            "pid": PID,
            "tid": 0,
            "args": {"name": f"unstall: {program}"},
        }
    ]
    threads: dict[int, str] = {}
    for loop in report.loops:
        threads.setdefault(loop.thread_id, f"{loop.thread} ({loop.kind} loop)")
    for stall in report.stalls:
        threads.setdefault(stall.thread_id, stall.thread)
    for tid, name in threads.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": name}}
        )
    return events


def _lag_events(report: Report) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for loop in report.loops:
        name = f"loop lag: {loop.thread}"
        for t, lag in loop.lag:
            events.append(
                {
                    "name": name,
                    "ph": "C",
                    "ts": _us(t),
                    "pid": PID,
                    "tid": loop.thread_id,
                    "args": {"lag_ms": round(lag * 1000, 3)},
                }
            )
    return events


def render_trace(report: Report) -> dict[str, Any]:
    """Build the trace as a JSON-ready dict (see the module docstring for its layout)."""
    events = _metadata(report) + _lag_events(report) + [_stall_event(s) for s in report.stalls]
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "producer": "unstall",
            "started_at": report.started_at,
            "duration_s": report.duration_s,
            "threshold_s": report.threshold_s,
            "argv": " ".join(report.argv),
        },
    }


def write_trace(report: Report, path: str | os.PathLike[str]) -> None:
    """Write the trace to ``path`` atomically.

    Raises:
        OSError: the file cannot be written.
    """
    _write_atomic(Path(path), json.dumps(render_trace(report), separators=(",", ":")))


def _write_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
