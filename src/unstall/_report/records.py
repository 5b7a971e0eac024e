"""The records a watcher produces: :class:`Frame`, :class:`Stall` and :class:`Report`.

These are plain data. Every output form (terminal summary, ``--json``, HTML timeline,
Perfetto trace, metrics) is rendered from them, and a :class:`Report` round-trips
through JSON with :meth:`Report.to_json` / :meth:`Report.from_json`.

JSON format, version 1 (field names are a public contract: add fields, never rename)::

    {
      "version": 1,
      "threshold_s": 0.1,
      "started_at": 1764115200.0,      # wall-clock epoch seconds when watching began
      "duration_s": 12.5,              # how long the run was watched
      "argv": ["app.py", "--port", "80"],
      "loops": [{"id": "...", "thread": "MainThread", "thread_id": 1, "kind": "asyncio",
                 "lag": [[t_s, lag_s], ...]}],
      "stalls": [
        {"start_s": 1.25,              # seconds after started_at
         "duration_s": 3.0,
         "thread": "MainThread", "thread_id": 1, "loop": "...",
         "task": "Task-2", "coro": "test1", "callback": null,
         "culprit": {"file": "/abs/app.py", "line": 7, "function": "slow_function",
                     "code": "time.sleep(3)"},
         "call": "time.sleep",
         "kind": "wait",               # "wait" | "cpu" | "gc" | "import" | "unknown"
         "fix": {"action": "to_thread", # "to_thread" | "to_process" | "tune_gc" |
                 "text": "..."},        #   "import_early" | "none"
         "gc_s": 0.0,                  # seconds of it spent in garbage collection
         "gc_generations": [],         # the generations collected meanwhile
         "gc_collected": 0,            # objects those collections freed
         "stack": [{"file": "/abs/app.py", "line": 30, "function": "<module>"}, ...],
         "samples": [{"file": "...", "line": 7, "function": "slow_function", "count": 29}],
         "sample_count": 30,
         "ongoing": false,
         "method": "sampler",
         "pid": 4242, "process": "gunicorn worker 1"}   # only when several processes
      ],
      "processes": [{"pid": 4242, "role": "gunicorn worker 1",    # only when several
                     "started_at": 1764115200.5, "duration_s": 11.0}]
    }
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from unstall._exceptions import ReportError
from unstall._report.fixes import Fix, decide
from unstall._report.format import write_atomic

__all__ = ["Aggregate", "Frame", "LoopInfo", "ProcessInfo", "Report", "Stall", "StallKind"]

REPORT_VERSION = 1

StallKind = Literal["wait", "cpu", "gc", "import", "unknown"]
_KINDS = ("wait", "cpu", "gc", "import")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a stack: an absolute file path, a line number and a function name.

    ``code`` is the stripped source line when it could be read. ``coroutine`` tells that the
    frame runs the body of an ``async def`` (a coroutine or an async generator); it is
    known for sampled frames, not for those read from a faulthandler dump, and it plays
    no part in comparing frames.
    """

    file: str
    line: int
    function: str
    code: str | None = None
    coroutine: bool = field(default=False, compare=False)

    @property
    def location(self) -> str:
        """``file:line``, the form editors and terminals make clickable."""
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        data = {"file": self.file, "line": self.line, "function": self.function, "code": self.code}
        if self.coroutine:  # only when set: older readers and reports stay as they were
            data["coroutine"] = True
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Frame:
        return cls(
            file=str(data["file"]),
            line=int(data["line"]),
            function=str(data["function"]),
            code=None if data.get("code") is None else str(data["code"]),
            coroutine=data.get("coroutine") is True,
        )


@dataclass(frozen=True, slots=True)
class SampleCount:
    """How many watchdog samples fell on one line of the culprit's stack."""

    frame: Frame
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.frame.to_dict(), "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SampleCount:
        return cls(frame=Frame.from_dict(data), count=int(data["count"]))


@dataclass(frozen=True, slots=True)
class Stall:
    """One period during which an event loop ran a single callback for too long.

    Attributes:
        start_s: When the stall began, in seconds after the watcher started.
        duration_s: How long the loop was blocked (so far, when ``ongoing``).
        thread: Name of the thread running the loop.
        thread_id: ``threading.get_ident()`` of that thread.
        loop: A short description of the loop (class and id).
        task: Name of the task that was running, or ``None`` outside a task.
        coro: Qualified name of that task's coroutine.
        callback: Description of the callback, when the stall happened outside a task.
        culprit: The frame of the user's own code where the stall spent its time.
        call: The innermost call, e.g. ``"time.sleep"`` or ``"socket.socket.recv"``.
        kind: ``"wait"`` (sleep, I/O, locks, subprocesses), ``"cpu"`` (Python or C code
            computing), ``"gc"`` (garbage collection was most of it), ``"import"`` (a
            first import) or ``"unknown"``.
        stack: The loop thread's stack, outermost frame first.
        samples: Where the watchdog's samples fell, most frequent first.
        sample_count: How many samples were taken during the stall.
        ongoing: ``True`` while the stall still lasts (a hang being reported live).
        method: How the stack was obtained (``"sampler"``, ``"signal"`` or
            ``"faulthandler"``).
        gc_s: Seconds of the stall spent in garbage collection.
        gc_generations: The generations collected during the stall.
        gc_collected: How many objects those collections freed.
        fix: What to do about it (:class:`~unstall._report.fixes.Fix`), decided by the
            fix catalogue from the fields above unless given.
        context: What the blocked task was serving: ``trace_id``, ``span_id`` and
            ``span_name`` of its OpenTelemetry span, ``http.method``, ``http.route`` and
            ``http.target`` of its ASGI request, and what ``watch(context=...)`` added.
            Empty when nothing is known.
        pid: The process the loop ran in, when ``unstall run`` followed several
            processes (``None`` in reports of one process, and in older reports).
        process: That process's role, e.g. ``"gunicorn worker 2"``, ``"SpawnProcess-1"``.
    """

    start_s: float
    duration_s: float
    thread: str
    thread_id: int
    loop: str
    task: str | None = None
    coro: str | None = None
    callback: str | None = None
    culprit: Frame | None = None
    call: str | None = None
    kind: StallKind = "unknown"
    stack: tuple[Frame, ...] = ()
    samples: tuple[SampleCount, ...] = ()
    sample_count: int = 0
    ongoing: bool = False
    method: str = "sampler"
    context: dict[str, Any] = field(default_factory=dict)
    gc_s: float = 0.0
    gc_generations: tuple[int, ...] = ()
    gc_collected: int = 0
    fix: Fix = None  # type: ignore[assignment]  # set from the catalogue when not given
    pid: int | None = None
    process: str | None = None

    def __post_init__(self) -> None:
        if getattr(self, "fix", None) is None:
            object.__setattr__(self, "fix", decide(self))

    def with_updates(self, **changes: Any) -> Stall:
        """Return a copy with some fields changed (the fix decided again unless given)."""
        changes.setdefault("fix", None)
        return replace(self, **changes)

    def same_as(self, other: Stall) -> bool:
        """The same stall of the same loop (one seen live, ``ongoing``, the other at its end)."""
        return (
            self.thread_id == other.thread_id
            and self.loop == other.loop
            and abs(self.start_s - other.start_s) < 0.05
        )

    @property
    def fix_hint(self) -> str:
        """The fix's sentence (``fix.text``): every output shows this same text."""
        return self.fix.text

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "start_s": round(self.start_s, 6),
            "duration_s": round(self.duration_s, 6),
            "thread": self.thread,
            "thread_id": self.thread_id,
            "loop": self.loop,
            "task": self.task,
            "coro": self.coro,
            "callback": self.callback,
            "culprit": None if self.culprit is None else self.culprit.to_dict(),
            "call": self.call,
            "kind": self.kind,
            "stack": [f.to_dict() for f in self.stack],
            "samples": [s.to_dict() for s in self.samples],
            "sample_count": self.sample_count,
            "ongoing": self.ongoing,
            "method": self.method,
            "context": dict(self.context),
            "gc_s": round(self.gc_s, 6),
            "gc_generations": list(self.gc_generations),
            "gc_collected": self.gc_collected,
            "fix": self.fix.to_dict(),
        }
        _add_process(data, self.pid, self.process)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stall:
        culprit = data.get("culprit")
        kind = data.get("kind", "unknown")
        fix = data.get("fix")
        return cls(
            start_s=float(data["start_s"]),
            duration_s=float(data["duration_s"]),
            thread=str(data.get("thread", "?")),
            thread_id=int(data.get("thread_id", 0)),
            loop=str(data.get("loop", "?")),
            task=data.get("task"),
            coro=data.get("coro"),
            callback=data.get("callback"),
            culprit=None if culprit is None else Frame.from_dict(culprit),
            call=data.get("call"),
            kind=kind if kind in _KINDS else "unknown",
            stack=tuple(Frame.from_dict(f) for f in data.get("stack", ())),
            samples=tuple(SampleCount.from_dict(s) for s in data.get("samples", ())),
            sample_count=int(data.get("sample_count", 0)),
            ongoing=bool(data.get("ongoing", False)),
            method=str(data.get("method", "sampler")),
            context=dict(data.get("context") or {}),
            gc_s=float(data.get("gc_s", 0.0)),
            gc_generations=tuple(int(g) for g in data.get("gc_generations", ())),
            gc_collected=int(data.get("gc_collected", 0)),
            fix=None if fix is None else Fix.from_dict(fix),  # type: ignore[arg-type]
            pid=_optional_int(data.get("pid")),
            process=_optional_str(data.get("process")),
        )


@dataclass(slots=True)
class LoopInfo:
    """One watched event loop and the lag its heartbeat measured over time."""

    id: str
    thread: str
    thread_id: int
    kind: str = "asyncio"
    lag: list[tuple[float, float]] = field(default_factory=list)
    """``(t_s, lag_s)`` pairs: seconds after the watcher started, and how late the heartbeat was."""
    pid: int | None = None
    process: str | None = None
    """The process and its role, as for :class:`Stall` (``None`` for one process)."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "thread": self.thread,
            "thread_id": self.thread_id,
            "kind": self.kind,
            "lag": [[round(t, 6), round(lag, 6)] for t, lag in self.lag],
        }
        _add_process(data, self.pid, self.process)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoopInfo:
        return cls(
            id=str(data["id"]),
            thread=str(data.get("thread", "?")),
            thread_id=int(data.get("thread_id", 0)),
            kind=str(data.get("kind", "asyncio")),
            lag=[(float(t), float(v)) for t, v in data.get("lag", ())],
            pid=_optional_int(data.get("pid")),
            process=_optional_str(data.get("process")),
        )


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process watched by ``unstall run`` (the program, or a child it started).

    Attributes:
        pid: Its process id.
        role: What it is: ``"main"``, ``"gunicorn worker 2"``, ``"SpawnProcess-1"``...
        started_at: Wall-clock epoch seconds when watching it began.
        duration_s: How long it was watched; ``None`` when it ended without saying
            (killed, or ended by ``os._exit``).
    """

    pid: int
    role: str
    started_at: float = 0.0
    duration_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        duration = None if self.duration_s is None else round(self.duration_s, 6)
        return {
            "pid": self.pid,
            "role": self.role,
            "started_at": self.started_at,
            "duration_s": duration,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessInfo:
        duration = data.get("duration_s")
        return cls(
            pid=int(data["pid"]),
            role=str(data.get("role", "?")),
            started_at=float(data.get("started_at", 0.0)),
            duration_s=None if duration is None else float(duration),
        )


def _add_process(data: dict[str, Any], pid: int | None, process: str | None) -> None:
    """The process fields, only when known: reports of one process stay as they were."""
    if pid is not None:
        data["pid"] = pid
    if process is not None:
        data["process"] = process


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(slots=True)
class Aggregate:
    """Stalls at one culprit line that a watcher counted but did not keep as records.

    A watcher keeps at most ``max_records`` stalls; past that, each further stall only adds
    to its culprit's aggregate, so a watcher that runs for days keeps bounded memory.
    """

    culprit: Frame | None
    count: int = 0
    total_s: float = 0.0
    worst_s: float = 0.0

    def add(self, duration_s: float) -> None:
        self.count += 1
        self.total_s += duration_s
        self.worst_s = max(self.worst_s, duration_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "culprit": None if self.culprit is None else self.culprit.to_dict(),
            "count": self.count,
            "total_s": round(self.total_s, 6),
            "worst_s": round(self.worst_s, 6),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Aggregate:
        culprit = data.get("culprit")
        return cls(
            culprit=None if culprit is None else Frame.from_dict(culprit),
            count=int(data.get("count", 0)),
            total_s=float(data.get("total_s", 0.0)),
            worst_s=float(data.get("worst_s", 0.0)),
        )


@dataclass(slots=True)
class Report:
    """Everything one watched run produced: its stalls and its loops' lag."""

    threshold_s: float
    stalls: list[Stall] = field(default_factory=list)
    loops: list[LoopInfo] = field(default_factory=list)
    started_at: float = 0.0
    duration_s: float = 0.0
    argv: list[str] = field(default_factory=list)
    aggregated: list[Aggregate] = field(default_factory=list)
    """Stalls counted but not kept (past the watcher's ``max_records``), per culprit."""
    notes: list[str] = field(default_factory=list)
    """Findings besides stalls, one line each: an offload pool that was full, and what
    unstall itself failed to do (its own internal errors, contained so that the program
    went on), e.g. "watching stopped for loop X: internal error in the probe, see the
    unstall log"."""

    processes: list[ProcessInfo] = field(default_factory=list)
    """The processes ``unstall run`` watched, when it followed children (else empty)."""

    @property
    def stall_count(self) -> int:
        """Every stall seen: those kept in ``stalls`` and those only counted."""
        return len(self.stalls) + sum(a.count for a in self.aggregated)

    def to_dict(self) -> dict[str, Any]:
        notes = {"notes": list(self.notes)} if self.notes else {}
        data: dict[str, Any] = {
            "version": REPORT_VERSION,
            "threshold_s": self.threshold_s,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 6),
            "argv": list(self.argv),
            "loops": [loop.to_dict() for loop in self.loops],
            "stalls": [s.to_dict() for s in self.stalls],
            "stall_count": self.stall_count,
            "aggregated": [a.to_dict() for a in self.aggregated],
            **notes,
        }
        if self.processes:
            data["processes"] = [p.to_dict() for p in self.processes]
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the report as JSON, atomically (a reader never sees half a file).

        Raises:
            OSError: the file cannot be written; a file already at ``path`` is left as it was.
        """
        write_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        if not isinstance(data, Mapping) or "stalls" not in data:
            raise ReportError("not an unstall report (no 'stalls' field)")
        version = data.get("version")
        if version != REPORT_VERSION:
            raise ReportError(f"unsupported report version {version!r} (expected {REPORT_VERSION})")
        try:
            return cls(
                threshold_s=float(data.get("threshold_s", 0.0)),
                stalls=[Stall.from_dict(s) for s in data["stalls"]],
                loops=[LoopInfo.from_dict(lp) for lp in data.get("loops", ())],
                started_at=float(data.get("started_at", 0.0)),
                duration_s=float(data.get("duration_s", 0.0)),
                argv=[str(a) for a in data.get("argv", ())],
                aggregated=[Aggregate.from_dict(a) for a in data.get("aggregated", ())],
                notes=[str(n) for n in data.get("notes", ())],
                processes=[ProcessInfo.from_dict(p) for p in data.get("processes", ())],
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"malformed unstall report: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Report:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Report:
        """Read a report saved with ``--json``; raises :class:`ReportError` on any problem."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ReportError(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ReportError(f"{os.fspath(path)!r} is not a text file") from None
        return cls.from_json(text)


def group_by_culprit(stalls: Iterable[Stall]) -> list[tuple[Frame | None, list[Stall]]]:
    """Group stalls by culprit line, the group with the most total time first."""
    groups: dict[tuple[str, int] | None, list[Stall]] = {}
    for stall in stalls:
        key = None if stall.culprit is None else (stall.culprit.file, stall.culprit.line)
        groups.setdefault(key, []).append(stall)
    ordered = sorted(groups.values(), key=lambda g: -sum(s.duration_s for s in g))
    return [(g[0].culprit, g) for g in ordered]
