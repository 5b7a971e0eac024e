"""One report from several processes: each process writes its part, the parent merges them.

``unstall run`` follows the processes a program starts (see :mod:`unstall._cli.follow`).
Each child writes its own file in the run's directory: JSON lines, the file opened with
``O_APPEND`` and each record written by one ``os.write`` as it happens, so a child killed by
SIGTERM or SIGKILL keeps what it wrote, and no two processes ever write to one file. A torn
last line (a kill in the middle of a write) is skipped when reading.

A stall is written twice: as a ``hang`` once it passes the threshold (and again each time it
is reported live), then as a ``stall`` when it ends. A process that dies in the middle, or
between the end of an iteration and the watchdog's next look at it (a server re-raising
SIGINT with its default action right after its last request), still leaves the hang: it
is reported ``ongoing``, as long as it was known to last.

Records, one per line::

    {"part": 1, "pid": 4242, "role": "SpawnProcess-1", "started_at": 1764115200.5}
    {"loop": {...}, "role": "..."}   # LoopInfo.to_dict() of a loop that started running
    {"hang": {...}}       # Stall.to_dict(), ongoing: a stall so far (written again as it grows)
    {"stall": {...}}      # Stall.to_dict(), start_s relative to the part's started_at
    {"end": {"duration_s": 3.2, "role": "SpawnProcess-1", "loops": [...]}}   # clean exit

The parent reads every part at exit (:func:`merge`), puts their stalls on its own
timeline, and names each stall's and loop's process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unstall._report.records import LoopInfo, ProcessInfo, Report, Stall

__all__ = ["Part", "PartWriter", "merge", "read_parts", "remove_run_dir"]

PART_VERSION = 1
_SUFFIX = ".part.jsonl"


class PartWriter:
    """Appends one process's records to its own file in the run directory."""

    def __init__(self, directory: str, pid: int, role: str, started_at: float) -> None:
        self.path = os.path.join(directory, f"{pid}-{os.urandom(4).hex()}{_SUFFIX}")
        self._lock = threading.Lock()
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600
        )
        head = {"part": PART_VERSION, "pid": pid, "role": role, "started_at": started_at}
        self._append(head)

    def stall(self, stall: Stall) -> None:
        """Record one finished stall (timed from this part's ``started_at``)."""
        self._append({"stall": stall.to_dict()})

    def hang(self, stall: Stall) -> None:
        """Record a stall still going on (kept unless its end, a ``stall``, comes)."""
        self._append({"hang": stall.to_dict()})

    def loop(self, loop: LoopInfo, role: str) -> None:
        """Record a loop that started running (its lag comes with the end, if any)."""
        self._append({"loop": loop.to_dict(), "role": role})

    def end(self, duration_s: float, role: str, loops: Iterable[LoopInfo]) -> None:
        """Record a clean end: how long the process was watched, and its loops' lag."""
        end = {"duration_s": duration_s, "role": role, "loops": [lp.to_dict() for lp in loops]}
        self._append({"end": end})

    def close(self, discard: bool = False) -> None:
        """Stop writing; ``discard`` also removes the file (a process not worth a part)."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
            if discard:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)

    def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                return
            written = 0
            while written < len(line):  # a regular file takes it whole; loop for safety
                written += os.write(self._fd, line[written:])


@dataclass
class Part:
    """What one process wrote: its stalls, and its end when it ended cleanly.

    ``stalls`` includes, ``ongoing``, each hang whose end the process did not write.
    """

    pid: int
    role: str
    started_at: float
    stalls: list[Stall] = field(default_factory=list)
    loops: list[LoopInfo] = field(default_factory=list)
    duration_s: float | None = None


def read_parts(directory: str) -> list[Part]:
    """Every part in ``directory``, oldest process first; unreadable lines are skipped."""
    parts = []
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(_SUFFIX))
    except OSError:
        return []
    for name in names:
        part = _read_part(Path(directory, name))
        if part is not None:
            parts.append(part)
    return sorted(parts, key=lambda p: p.started_at)


def _read_part(path: Path) -> Part | None:
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return None
    part: Part | None = None
    hangs: list[Stall] = []
    for raw in lines:
        try:
            record = json.loads(raw)
            if part is None:
                if record.get("part") != PART_VERSION:
                    return None
                part = Part(int(record["pid"]), str(record["role"]), float(record["started_at"]))
            elif "stall" in record:
                part.stalls.append(Stall.from_dict(record["stall"]))
            elif "hang" in record:
                hangs.append(Stall.from_dict(record["hang"]))
            elif "loop" in record:
                loop = LoopInfo.from_dict(record["loop"])
                if all(known.id != loop.id for known in part.loops):
                    part.loops.append(loop)
                part.role = str(record.get("role", part.role))
            elif "end" in record:
                end = record["end"]
                part.duration_s = float(end["duration_s"])
                part.role = str(end.get("role", part.role))
                part.loops = [LoopInfo.from_dict(lp) for lp in end.get("loops", ())]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a torn line from a process killed mid-write
    if part is not None:
        part.stalls += _unended(hangs, part.stalls)
        part.stalls.sort(key=lambda s: s.start_s)
    return part


def _unended(hangs: list[Stall], stalls: list[Stall]) -> list[Stall]:
    """The last record of each hang that no finished stall accounts for."""
    last: list[Stall] = []
    for hang in hangs:
        known = [i for i, seen in enumerate(last) if seen.same_as(hang)]
        if known:
            last[known[0]] = hang  # the same hang, reported again as it grew
        else:
            last.append(hang)
    return [h for h in last if not any(h.same_as(s) for s in stalls)]


def merge(report: Report, parts: list[Part], pid: int, role: str) -> Report:
    """``report`` (the main process's, as ``pid``/``role``) with every part's findings.

    Stalls and lag samples are moved onto the main report's timeline (seconds after its
    ``started_at``); each stall and loop names its process. With no part (no child was
    watched) the report is returned as it is: a report of one process names none.
    """
    if not parts:
        return report
    main = ProcessInfo(pid, role, report.started_at, report.duration_s)
    stalls = [s.with_updates(pid=pid, process=role) for s in report.stalls]
    loops = [_stamped(lp, pid, role, 0.0) for lp in report.loops]
    processes = [main]
    for part in parts:
        shift = part.started_at - report.started_at
        part_role = _final_role(part)
        processes.append(ProcessInfo(part.pid, part_role, part.started_at, part.duration_s))
        for stall in part.stalls:
            start = max(stall.start_s + shift, 0.0)
            stalls.append(stall.with_updates(start_s=start, pid=part.pid, process=part_role))
        loops += [_stamped(lp, part.pid, part_role, shift) for lp in part.loops]
    stalls.sort(key=lambda s: s.start_s)
    return Report(
        report.threshold_s,
        stalls=stalls,
        loops=loops,
        started_at=report.started_at,
        duration_s=report.duration_s,
        argv=list(report.argv),
        aggregated=list(report.aggregated),
        processes=processes,
    )


def _final_role(part: Part) -> str:
    """The last role a process gave itself (a forked child learns its name late)."""
    named = [s.process for s in part.stalls if s.process]
    return part.role if part.duration_s is not None or not named else named[-1]


def _stamped(loop: LoopInfo, pid: int, role: str, shift: float) -> LoopInfo:
    lag = [(t + shift, v) for t, v in loop.lag]
    return LoopInfo(loop.id, loop.thread, loop.thread_id, loop.kind, lag, pid=pid, process=role)


def remove_run_dir(directory: str) -> None:
    """Remove the run directory and every part in it (nothing is left behind)."""
    shutil.rmtree(directory, ignore_errors=True)
