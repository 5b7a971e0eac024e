"""Where C code that held the GIL ran, seen from the point where its thread stopped next.

A thread holding the GIL in C code (``sum(range(10**9))``, ``b"*" * n``, a catastrophic
regex) stops only at CPython's next check for pending work: right after a call into C
returns (``CALL`` checks when it ends), at the start of a Python function (``RESUME``), at
a loop's jump back. That is where it gives up the GIL to the watchdog, and where a signal
handler runs. From a frame stopped there, :func:`locate` finds the culprit: the call that
just returned, or the last operator before the check (the check may be in a function just
started, or in asyncio's ``Handle._run`` after the task's step returned, with the
coroutine suspended right after the culprit).
"""

from __future__ import annotations

import asyncio
import dis
import types
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from unstall._watch.culprit import in_asyncio, is_machinery

__all__ = ["Place", "Positions", "back", "lasti", "lineno", "locate", "outward", "positions"]

_CHECKS = frozenset(dis.opmap[name] for name in ("RESUME", "JUMP_BACKWARD") if name in dis.opmap)
"""Where CPython always checks for pending work. A ``CALL`` checks when it returns from C
code, but a call that starts a Python function checks in it, and one that makes a
coroutine checks nowhere: a stretch between two checks may hold such calls."""
_CALLS = frozenset(
    dis.opmap[name]
    for name in ("CALL", "CALL_KW", "CALL_FUNCTION_EX", "PRECALL")
    if name in dis.opmap
)
# Instructions that can run long in C without a check: operators, subscripts, slicing,
# building containers and strings, unpacking.
_HEAVY = frozenset(
    dis.opmap[name]
    for name in (
        "BINARY_OP",
        "BINARY_SUBSCR",
        "BINARY_SLICE",
        "STORE_SUBSCR",
        "STORE_SLICE",
        "DELETE_SUBSCR",
        "COMPARE_OP",
        "CONTAINS_OP",
        "BUILD_STRING",
        "FORMAT_VALUE",
        "FORMAT_SIMPLE",
        "FORMAT_WITH_SPEC",
        "CONVERT_VALUE",
        "LIST_EXTEND",
        "SET_UPDATE",
        "DICT_UPDATE",
        "DICT_MERGE",
        "UNPACK_SEQUENCE",
        "UNPACK_EX",
        "CALL_INTRINSIC_1",
        "GET_ITER",
    )
    if name in dis.opmap
)
_RESUME = dis.opmap["RESUME"]
_AWAITS = frozenset(
    dis.opmap[name] for name in ("SEND", "YIELD_VALUE", "GET_AWAITABLE") if name in dis.opmap
)


@lru_cache(maxsize=1024)
def _instructions(code: types.CodeType) -> dict[int, tuple[int, int, int | None]]:
    """offset -> (opcode, index in order, line), for the unspecialised instructions."""
    out: dict[int, tuple[int, int, int | None]] = {}
    for i, ins in enumerate(dis.get_instructions(code)):
        out[ins.offset] = (ins.opcode, i, ins.positions.lineno if ins.positions else None)
    return out


@lru_cache(maxsize=1024)
def _ordered(code: types.CodeType) -> tuple[tuple[int, int | None], ...]:
    return tuple(
        (ins.opcode, ins.positions.lineno if ins.positions else None)
        for ins in dis.get_instructions(code)
    )


def _current(code: types.CodeType, lasti: int) -> tuple[int, int, int | None] | None:
    table = _instructions(code)
    # f_lasti may point into a call's inline cache: the instruction is the one before.
    offset = lasti
    while offset >= 0 and offset not in table:
        offset -= 2
    return table.get(offset)


def _heavy_before(code: types.CodeType, index: int) -> int | None:
    """The line of the last heavy instruction before ``index`` since the previous check."""
    ordered = _ordered(code)
    for i in range(index - 1, -1, -1):
        op, line = ordered[i]
        if op in _HEAVY:
            return line
        if op in _CHECKS:
            return None
    return None


def _before_await(code: types.CodeType, index: int) -> int | None:
    """At an ``await`` (or the call making its coroutine): the line of the last call or
    operator before this line's own instructions, since the previous check.

    Awaiting does nothing long in itself, so the time went just before: in a call that
    returned (a Python function doing C work, freeing what it built) or an operator.
    """
    heavy = _heavy_before(code, index)
    if heavy is not None:
        return heavy
    ordered = _ordered(code)
    here = ordered[index][1]
    i = index - 1
    while i >= 0 and ordered[i][1] == here:
        i -= 1
    for j in range(i, -1, -1):
        op, line = ordered[j]
        if op in _CHECKS:
            return None
        if op in _CALLS or op in _HEAVY:
            return line
    return None


def _suspended_frames(handle: object) -> list[types.FrameType]:
    """The coroutine frames of the task ``handle`` just stepped, outermost first."""
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if not isinstance(task, asyncio.Task):
        return []
    coro: Any = task.get_coro()
    frames = []
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        frames.append(coro.cr_frame)
        coro = getattr(coro, "cr_await", None)
    return frames


Place = tuple[list[types.FrameType], int]


def outward(frame: types.FrameType | None, at: Positions | None = None) -> list[types.FrameType]:
    """``frame`` and its callers (as they were when ``at`` was read), outermost first."""
    chain = []
    while frame is not None:
        chain.append(frame)
        frame = back(frame, at)
    chain.reverse()
    return chain


Positions = Mapping[int, tuple[int, int, "types.FrameType | None"]]
"""``id(frame) -> (f_lasti, f_lineno, f_back)``, read at one moment (see :func:`positions`)."""


def positions(top: types.FrameType) -> dict[int, tuple[int, int, types.FrameType | None]]:
    """Where ``top`` and its callers are now. Read first, while the thread is parked: the
    watchdog may lose the GIL while it looks further (a first ``realpath`` of a file, a
    source read), and the thread move on, its coroutines leaving the stack."""
    found: dict[int, tuple[int, int, types.FrameType | None]] = {}
    frame: types.FrameType | None = top
    while frame is not None:
        caller = frame.f_back
        found[id(frame)] = (frame.f_lasti, frame.f_lineno or 0, caller)
        frame = caller
    return found


def lasti(frame: types.FrameType, at: Positions | None) -> int:
    """``frame``'s instruction, as it was when ``at`` was read."""
    seen = at.get(id(frame)) if at is not None else None
    return frame.f_lasti if seen is None else seen[0]


def lineno(frame: types.FrameType, at: Positions | None) -> int:
    """``frame``'s line, as it was when ``at`` was read."""
    seen = at.get(id(frame)) if at is not None else None
    return (frame.f_lineno or 0) if seen is None else seen[1]


def back(frame: types.FrameType, at: Positions | None) -> types.FrameType | None:
    """``frame``'s caller, as it was when ``at`` was read."""
    seen = at.get(id(frame)) if at is not None else None
    return frame.f_back if seen is None else seen[2]


def locate(
    frame: types.FrameType, at: Positions | None = None, *, allocation: bool = False
) -> Place | None:
    """Where the C code ran, when the handler ran in ``frame`` right after it: the stack
    (outermost first, ending with the culprit's frame) and the culprit's line.

    ``at`` holds the frames' positions read earlier (the frames' own are read otherwise).
    ``allocation``: what is sought is the allocation that started a garbage collection,
    which a call makes as well as an operator (at a loop's jump back, the line before).
    ``None`` when it cannot be told (the work ran in a callback that is gone).
    """
    found = _current(frame.f_code, lasti(frame, at))
    if found is None:
        return None
    op, index, line = found
    if op == _RESUME:
        first = back(frame, at)
        if frame.f_code.co_code[lasti(frame, at) + 1] != 0 or first is None:
            return None  # a coroutine resumed: what ran before was another callback
        # A function just started: the C code ran in its caller, before or in the call.
        caller: types.FrameType = first
        found = _current(caller.f_code, lasti(caller, at))
        # Awaited by asyncio's own coroutine that just started too (``sleep(0)`` starting
        # ``__sleep0``): it ran nothing long, the time went in the frame awaiting it.
        while found is not None and found[0] in _AWAITS and in_asyncio(caller.f_code.co_filename):
            outer = back(caller, at)
            if outer is None:
                break
            caller = outer
            found = _current(caller.f_code, lasti(caller, at))
        if found is None:
            return None
        frame, (op, index, line) = caller, found
        if op in _AWAITS:
            heavy = _before_await(frame.f_code, index)
        else:
            heavy = _heavy_before(frame.f_code, index)
        return _checked(outward(frame, at), heavy if heavy is not None else line)
    if op in _CALLS and is_machinery(frame.f_code.co_filename, frame.f_code.co_name):
        # Handle._run, the task's step just returned: the coroutine is suspended right
        # after the C code, at its await.
        coros = _suspended_frames(frame.f_locals.get("self"))
        if not coros:
            return None
        inner = coros[-1]
        found = _current(inner.f_code, inner.f_lasti)
        if found is None:
            return None
        heavy = _before_await(inner.f_code, found[1])
        return _checked(outward(frame, at) + coros, heavy if heavy is not None else found[2])
    if op in _CALLS:
        return _checked(outward(frame, at), line)  # the C call that just returned
    before = _before_await if allocation else _heavy_before
    heavy = before(frame.f_code, index)
    return _checked(outward(frame, at), heavy if heavy is not None else line)


def _checked(chain: list[types.FrameType], line: int | None) -> Place | None:
    code = chain[-1].f_code
    if line is None or is_machinery(code.co_filename, code.co_name):
        return None
    return chain, line
