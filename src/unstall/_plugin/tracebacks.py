"""Take unstall's own frames out of a failure's traceback, including in exception groups.

pytest hides frames marked ``__tracebackhide__`` in its own traceback style, but not in
``--tb=native`` nor (before pytest 9) inside an ``ExceptionGroup``; a user reading why a
test failed needs their own code and their libraries, not unstall's checking machinery.
"""

from __future__ import annotations

import itertools
import os
from types import TracebackType

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _own(tb: TracebackType) -> bool:
    return tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def _strip(tb: TracebackType | None) -> TracebackType | None:
    kept: list[TracebackType] = []
    while tb is not None:
        if not _own(tb):
            kept.append(tb)
        tb = tb.tb_next
    for outer, inner in itertools.pairwise(kept):
        outer.tb_next = inner
    if kept:
        kept[-1].tb_next = None
    return kept[0] if kept else None


def strip_own_frames(error: BaseException | None) -> None:
    """Remove unstall's frames from ``error``, its group members, causes and contexts."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            exc.__traceback__ = _strip(exc.__traceback__)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        pending += [exc.__cause__, exc.__context__]
