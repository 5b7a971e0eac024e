"""Where C code ran, read from a stack caught right after it: positions read once, early."""

from __future__ import annotations

import asyncio
import sys
import types

import unstall
from unstall._report.records import Frame
from unstall._watch.checkpoint import back, locate, positions
from unstall._watch.sampler import Sample
from unstall._watch.watchdog import _the_watchers_own


def test_positions_keep_the_callers_of_a_coroutine_that_has_since_suspended() -> None:
    seen: list[tuple[types.FrameType, dict[int, tuple[int, int, types.FrameType | None]]]] = []

    async def inner() -> None:
        here = sys._getframe()
        seen.append((here, positions(here)))
        await asyncio.sleep(0)

    async def outer() -> None:
        await inner()

    asyncio.run(outer())
    frame, at = seen[0]
    # The coroutine is done (on 3.11 its frame lost its callers): the positions kept them.
    caller = back(frame, at)
    assert caller is not None
    assert caller.f_code.co_name == "outer"
    assert at[id(frame)][1] == frame.f_code.co_firstlineno + 2  # where it was read


def test_locate_reads_the_positions_given_not_where_the_frame_is_now() -> None:
    def work() -> tuple[types.FrameType, dict[int, tuple[int, int, types.FrameType | None]]]:
        frame = sys._getframe()
        at = positions(frame)  # read here, in a call
        return frame, at  # the frame is here now

    frame, at = work()
    place = locate(frame, at)
    assert place is not None
    chain, line = place
    assert chain[-1] is frame
    assert line == work.__code__.co_firstlineno + 2
    assert frame.f_lineno == work.__code__.co_firstlineno + 3


def _sample(path: str) -> Sample:
    return Sample(0.0, (Frame(__file__, 1, "test"), Frame(path, 10, "f")), 0)


def test_a_loop_seen_only_in_the_watchers_own_code_is_not_the_programs_stall() -> None:
    own = unstall._watch.watcher.__file__
    assert _the_watchers_own([_sample(own), _sample(own)])
    assert not _the_watchers_own([_sample(own), _sample(__file__)])
    assert not _the_watchers_own([])
    # A collection that began in the watcher's code is the program's pause all the same.
    gc_sample = _sample(own)
    gc_sample.method = "gc"
    assert not _the_watchers_own([gc_sample])
