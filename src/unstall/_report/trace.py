"""A :class:`~unstall.Report` as a Chrome Trace Event Format file, for Perfetto and chrome://tracing.

The object form is used (``{"traceEvents": [...], "displayTimeUnit": "ms"}``). Each loop
thread becomes a track named by a ``thread_name`` metadata event; each stall is a
complete event (``"ph": "X"``) on its thread's track, named ``function (file:line)``
after its culprit; each loop's lag is a counter (``"ph": "C"``). Times are microseconds
after the watcher started; the wall-clock start is kept in ``otherData``.

Python thread idents (``threading.get_ident()``, e.g. 140245871261504) do not fit the
32 bits Perfetto keeps for a ``tid``: it merges such threads into one track
(google/perfetto#522, #886). So each thread gets a small ``tid`` (1, 2, ... in lane
order, never 0) and its ident is kept in the stall's ``args["thread_id"]``.

A report of several processes (``unstall run`` following children) puts each process in
its own Perfetto process, named by its role, with its real pid; a thread is then known by
its pid and ident (a forked child's main thread has its parent's ident).
"""

from __future__ import annotations

import json
import os
from typing import Any

from unstall._report.format import write_atomic
from unstall._report.records import LoopInfo, Report, Stall

__all__ = ["render_trace", "stall_name", "write_trace"]

PID = 1
"""The process of a report that names none: the watched program."""


def _us(seconds: float) -> float:
    return round(seconds * 1_000_000, 3)


def stall_name(stall: Stall) -> str:
    """``function (file:line)`` for the culprit, with the file's base name."""
    if stall.culprit is None:
        return f"stall in {stall.call or 'unknown code'}"
    c = stall.culprit
    return f"{c.function} ({os.path.basename(c.file)}:{c.line})"


Thread = tuple[int, int]
"""(trace pid, thread ident)."""
Tids = dict[Thread, tuple[int, str]]


def _thread(item: Stall | LoopInfo) -> Thread:
    return (PID if item.pid is None else item.pid, item.thread_id)


def _tids(report: Report) -> Tids:
    """(pid, thread ident) -> (small tid, track name), the main thread first."""
    names: dict[Thread, str] = {}
    for loop in sorted(report.loops, key=lambda lp: lp.thread != "MainThread"):
        names.setdefault(_thread(loop), f"{loop.thread} ({loop.kind} loop)")
    for stall in report.stalls:
        names.setdefault(_thread(stall), stall.thread)
    return {key: (i, name) for i, (key, name) in enumerate(names.items(), start=1)}


def _stall_event(stall: Stall, tids: Tids) -> dict[str, Any]:
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
        "thread": stall.thread,
        "thread_id": stall.thread_id,
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
        "pid": _thread(stall)[0],
        "tid": tids[_thread(stall)][0],
        "args": args,
    }


def _process_names(report: Report, tids: Tids) -> dict[int, str]:
    program = " ".join(report.argv) or "python"
    names = {pid: f"unstall: {program}" for pid, _ in tids} or {PID: f"unstall: {program}"}
    for process in report.processes:
        role = f"unstall: {program}" if process.role == "main" else process.role
        names[process.pid] = f"{role} (pid {process.pid})"
    return names


def _metadata(report: Report, tids: Tids) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for pid, name in _process_names(report, tids).items():
        events.append(
            {"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}}
        )
    for (pid, _), (tid, name) in tids.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}}
        )
        events.append(
            {
                "name": "thread_sort_index",
                "ph": "M",
                "pid": pid,
                "tid": tid,
                "args": {"sort_index": tid},
            }
        )
    return events


def _lag_events(report: Report, tids: Tids) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for loop in report.loops:
        name = f"loop lag: {loop.thread}"
        for t, lag in loop.lag:
            events.append(
                {
                    "name": name,
                    "ph": "C",
                    "ts": _us(t),
                    "pid": _thread(loop)[0],
                    "tid": tids[_thread(loop)][0],
                    "args": {"lag_ms": round(lag * 1000, 3)},
                }
            )
    return events


def render_trace(report: Report) -> dict[str, Any]:
    """Build the trace as a JSON-ready dict (see the module docstring for its layout)."""
    tids = _tids(report)
    events = _metadata(report, tids) + _lag_events(report, tids)
    events += [_stall_event(s, tids) for s in report.stalls]
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
    write_atomic(path, json.dumps(render_trace(report), separators=(",", ":")))
