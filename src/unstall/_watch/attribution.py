"""Turn a stall's samples into :class:`Stall` records: split, weigh, choose, describe.

The loop side gives the exact start and end of a long loop iteration; the samples say
what ran inside it. One iteration can run several long callbacks back to back, so the
samples are first split where the running callback changes. Each sample then stands for
the time until the next one (the first also covers the time since the start, which is
what a faulthandler dump taken while the GIL was held needs), and the culprit line with the
most time wins.
"""

from __future__ import annotations

import ast
import linecache
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from unstall._report.records import Frame, SampleCount, Stall, StallKind
from unstall._watch.sampler import Sample

__all__ = ["CPU_RATIO", "LoopMeta", "build_stall", "sample_weights", "split_by_callback"]

# Calls that wait (on time, I/O, a lock, a process) rather than compute.
_WAIT_PREFIXES = (
    "time.sleep",
    "socket.",
    "ssl.",
    "select.",
    "selectors.",
    "os.read",
    "os.write",
    "os.wait",
    "os.pread",
    "os.pwrite",
    "os.system",
    "signal.pause",
    "signal.sigwait",
    "fcntl.flock",
    "fcntl.lockf",
    "multiprocessing.",
    "subprocess.",
    "_thread.",
    "threading.",
    "queue.",
    "sqlite3.",
    "_io.",
    "io.",
    "http.",
    "urllib.",
    "requests.",
    "input",
    "concurrent.futures.",
)
# The loop thread's busy time (on a CPU or runnable) over the stall's wall time: a waiting
# thread stays near 0, a computing one near 1 (less when other threads hold the GIL).
CPU_RATIO = 0.3
# The call named is the one the culprit line was in for most of its time.
_CALL_SHARE = 0.8


@dataclass(frozen=True, slots=True)
class LoopMeta:
    """What a stall record says about the loop it happened on."""

    loop: str
    thread: str
    thread_id: int


def split_by_callback(
    samples: Sequence[Sample], start: float, end: float
) -> list[tuple[float, float, list[Sample]]]:
    """Split one long iteration where the running callback changes.

    Returns ``(start, end, samples)`` pieces covering ``[start, end]``; a boundary lies
    halfway between the last sample of one callback and the first of the next.
    """
    pieces: list[tuple[float, float, list[Sample]]] = []
    current: list[Sample] = []
    piece_start = start
    for sample in sorted(samples, key=lambda s: s.t):
        if current and sample.root is not None:
            roots = [s.root for s in current if s.root is not None]
            if roots and roots[-1] != sample.root:
                boundary = (current[-1].t + sample.t) / 2
                pieces.append((piece_start, boundary, current))
                current, piece_start = [], boundary
        current.append(sample)
    pieces.append((piece_start, end, current))
    return pieces


def sample_weights(samples: Sequence[Sample], start: float, end: float) -> list[float]:
    n = len(samples)
    out = []
    for i, sample in enumerate(samples):
        lo = start if i == 0 else sample.t
        hi = end if i == n - 1 else samples[i + 1].t
        out.append(max(hi - lo, 0.0))
    return out


def _with_code(frame: Frame) -> Frame:
    if frame.code is not None:
        return frame
    text = linecache.getline(frame.file, frame.line).strip()
    return replace(frame, code=text or None)


def _graft(inner: tuple[Frame, ...], full: Sequence[Sample]) -> tuple[Frame, ...]:
    """Complete a truncated stack with the outer frames of a full sample of the same callback.

    The join is the longest overlap on (file, function); the outer part comes from another
    moment of the same callback, so it is approximate.
    """
    if not full or not inner:
        return inner
    outer = max(full, key=lambda s: len(s.frames)).frames
    for k in range(len(outer)):
        span = min(len(inner), len(outer) - k)
        if all(
            (outer[k + j].file, outer[k + j].function) == (inner[j].file, inner[j].function)
            for j in range(span)
        ):
            return outer[:k] + inner
    return inner


def _resolver(resolved: Sequence[str]) -> Callable[[str | None], str | None]:
    """Map a call read from a source line (``lock.acquire``, from a faulthandler dump) to
    the name the sampler resolved on the same line (``_thread.lock.acquire``)."""

    def resolve(call: str | None) -> str | None:
        if call is None or call in resolved:
            return call
        tail = "." + call.rsplit(".", 1)[-1]
        return next((r for r in resolved if r.endswith(tail)), call)

    return resolve


def _waits(call: str | None) -> bool:
    return call is not None and call.startswith(_WAIT_PREFIXES)


def _kind(samples: Sequence[Sample], call: str | None, method: str) -> StallKind:
    if _waits(call):
        # A known waiting call waits, whatever the clocks say: its thread may have been
        # runnable only to take the GIL back, or the watchdog starved by another thread.
        return "wait"
    if method in ("faulthandler", "signal", "checkpoint"):
        return "cpu"  # only C code holding the GIL keeps the watchdog from sampling
    timed = [s for s in samples if s.cpu is not None]
    if len(timed) >= 2 and timed[-1].t - timed[0].t > 0.02:
        used = (timed[-1].cpu or 0.0) - (timed[0].cpu or 0.0)
        return "cpu" if used / (timed[-1].t - timed[0].t) >= CPU_RATIO else "wait"
    return "unknown"


def _context_of(samples: Sequence[Sample]) -> dict[str, Any]:
    """What the samples say the task served; the earliest sample's value wins."""
    found: dict[str, Any] = {}
    for sample in samples:
        for key, value in (sample.context or {}).items():
            found.setdefault(key, value)
    return found


def _is_import(frame: Frame) -> bool:
    return frame.file.startswith("<frozen importlib") and frame.function == "_find_and_load"


def _at_import(sample: Sample) -> Sample:
    """A sample inside a first import, re-pointed at the line that imports.

    The culprit is the frame just outside the outermost ``_find_and_load``: the ``import``
    statement of the program (or of the library that imported lazily), whatever the
    imported module was doing.
    """
    frames = sample.frames
    outer = next((i for i, f in enumerate(frames) if _is_import(f)), None)
    if outer is None:
        return sample
    # Above importlib's own frames (``importlib.import_module``, ``_gcd_import``).
    line = outer - 1
    while line >= 0 and _in_importlib(frames[line].file):
        line -= 1
    if line < 0:
        return sample
    return replace(sample, culprit=line, call=None, importing=True)


def _in_importlib(path: str) -> bool:
    return path.startswith("<frozen importlib") or f"{os.sep}importlib{os.sep}" in path


def _imported(frame: Frame) -> str | None:
    """The module a line imports (``import a.b`` -> ``a.b``), as written."""
    text = (frame.code or "").strip()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and node.names:
            return node.names[0].name
        if isinstance(node, ast.ImportFrom):
            return "." * node.level + (node.module or "")
    return None


def build_stall(
    samples: Sequence[Sample], start: float, end: float, meta: LoopMeta, *, ongoing: bool = False
) -> Stall:
    """One :class:`Stall` from the samples of one callback; ``start_s`` is monotonic time."""
    ordered = sorted(samples, key=lambda s: s.t)
    base = Stall(
        start_s=start,
        duration_s=max(end - start, 0.0),
        thread=meta.thread,
        thread_id=meta.thread_id,
        loop=meta.loop,
        ongoing=ongoing,
        method="none",
    )
    usable = [_at_import(s) for s in ordered if s.culprit >= 0]
    if not usable:
        return base
    weights = sample_weights(usable, start, end)
    by_line: dict[tuple[str, int], float] = defaultdict(float)
    for sample, w in zip(usable, weights, strict=True):
        c = sample.frames[sample.culprit]
        by_line[(c.file, c.line)] += w
    best = max(by_line, key=lambda k: by_line[k])
    chosen = [
        (s, w)
        for s, w in zip(usable, weights, strict=True)
        if (s.frames[s.culprit].file, s.frames[s.culprit].line) == best
    ]
    calls: dict[str | None, float] = defaultdict(float)
    resolve = _resolver([s.call for s, _ in chosen if s.method == "sampler" and s.call])
    for s, w in chosen:
        calls[resolve(s.call) if s.method != "sampler" else s.call] += w
    call = max(calls, key=lambda k: calls[k])
    if calls[call] < _CALL_SHARE * sum(calls.values()):
        call = None  # Python code computing, calling this and that along the way
    methods: dict[str, float] = defaultdict(float)
    for s, w in chosen:
        methods[s.method] += w
    method = max(methods, key=lambda k: methods[k])
    # The deepest of the chosen samples shows the most of the stack.
    rep = max(chosen, key=lambda sw: (len(sw[0].frames), sw[0].t))[0]
    stack = rep.frames
    if rep.truncated:
        stack = _graft(rep.frames, [s for s in ordered if not s.truncated])
    counts = Counter(s.frames[s.culprit] for s in usable)
    named = next((s for s in ordered if s.task is not None or s.callback is not None), rep)
    kind = _kind(ordered, call, method)
    if rep.importing:
        kind, call = "import", _imported(_with_code(rep.frames[rep.culprit]))
    return base.with_updates(
        context=_context_of(ordered),
        task=named.task,
        coro=named.coro,
        callback=named.callback if named.task is None else None,
        culprit=_with_code(rep.frames[rep.culprit]),
        call=call,
        kind=kind,
        stack=tuple(_with_code(f) for f in stack),
        samples=tuple(SampleCount(_with_code(f), n) for f, n in counts.most_common()),
        sample_count=len(ordered),
        method=method,
    )
