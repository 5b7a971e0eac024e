"""Every exception unstall's API documents, in one leaf module that any part may import."""

from __future__ import annotations

import contextlib
import signal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unstall._report.records import Frame

__all__ = [
    "BlockingCallError",
    "BlockingCallWarning",
    "ConfigError",
    "ReportError",
    "WorkerDiedError",
]


class BlockingCallError(RuntimeError):
    """A known blocking call was made on a thread running an event loop, in strict mode.

    Attributes:
        call: The call, e.g. ``"time.sleep"`` or ``"socket.socket.recv"``.
        file: Absolute path of the code that made it (the first frame outside the
            standard library, so ``Path.write_text`` is reported at your line).
        line: Line number in ``file``.
        function: The function containing that line.
        stack: The callback's frames, outermost first.
        hint: How to move the call off the loop.
        kind: What the call waits on: ``"network"``, ``"file"``, ``"sleep"``, ``"lock"``,
            ``"subprocess"``, ``"database"`` or ``"input"``.
        took_s: Seconds the call took, for a cheap call strict mode timed (``os.stat``
            over the budget); ``None`` for a call reported before it ran.
    """

    def __init__(
        self,
        message: str,
        *,
        call: str,
        file: str,
        line: int,
        function: str = "?",
        stack: tuple[Frame, ...] = (),
        hint: str = "",
        kind: str = "",
        took_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.call = call
        self.file = file
        self.line = line
        self.function = function
        self.stack = stack
        self.hint = hint
        self.kind = kind
        self.took_s = took_s

    def __reduce__(self) -> Any:  # keep the attributes across pickling (xdist, processes)
        fields = (self.call, self.file, self.line, self.function, self.kind, self.took_s)
        return _rebuild_error, (self.args[0], *fields)


def _rebuild_error(
    message: str,
    call: str,
    file: str,
    line: int,
    fn: str,
    kind: str = "",
    took_s: float | None = None,
) -> BlockingCallError:
    return BlockingCallError(
        message, call=call, file=file, line=line, function=fn, kind=kind, took_s=took_s
    )


class BlockingCallWarning(RuntimeWarning):
    """Emitted by strict mode with ``action="warn"``."""


class WorkerDiedError(RuntimeError):
    """A worker process died (``os._exit``, a signal, a segfault) while running a call.

    Only that call fails; the pool replaces the worker. ``exitcode`` is the process's exit
    status as :mod:`multiprocessing` reports it (negative: killed by that signal);
    ``signal`` is the signal that killed it, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        pid: int | None = None,
        exitcode: int | None = None,
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal: signal.Signals | None = None
        if exitcode is not None and exitcode < 0:
            with contextlib.suppress(ValueError):
                self.signal = signal.Signals(-exitcode)


class ReportError(ValueError):
    """A saved report could not be read: missing, not JSON, or not an unstall report."""


class ConfigError(ValueError):
    """``[tool.unstall]`` could not be read or holds a wrong value."""
