"""The child side of :class:`unstall.ProcessPool`: one worker process, one call at a time.

Wire format, both directions on one socket: an 8-byte big-endian length, then a pickle.
The parent sends ``(func, args, kwargs)`` (pickled with cloudpickle when installed); the
worker answers ``(status, payload)`` with one of the statuses below. An empty frame or a
closed socket tells the worker to exit. A pool with an initializer first gets one frame
from each new worker: ``(OK, None)`` once the initializer returned, or ``(RAISED, ...)``
(then the worker exits).
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import struct
import sys
import traceback
from typing import Any

HEADER = struct.Struct("!Q")

OK = 0
"""payload: the result."""
RAISED = 1
"""payload: ``(pickled exception or None, exception repr, formatted remote traceback)``."""
UNPICKLABLE_RESULT = 2
"""payload: ``(type name of the result, why it could not be pickled)``."""


def frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


def dumps_any(obj: object) -> bytes:
    """Pickle with the standard pickler (fast), falling back to cloudpickle (by value)."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        try:
            import cloudpickle
        except ImportError:
            raise
        return bytes(cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def _read_exact(fd: int, n: int) -> bytes | None:
    """``n`` bytes, or ``None`` at end of file (the parent closed the socket or died)."""
    chunks = []
    while n:
        try:
            chunk = os.read(fd, min(n, 1 << 20))
        except ConnectionResetError:  # the parent died with data unread: same as EOF
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _encode_error(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(exc))
    exc.__traceback__ = None  # the text carries it; frames' locals need not be pickled
    try:
        pickled: bytes | None = dumps_any(exc)
    except Exception:
        pickled = None
    return dumps_any((RAISED, (pickled, repr(exc), text)))


def _run_one(request: bytes) -> bytes:
    try:
        func, args, kwargs = pickle.loads(request)
        result = func(*args, **kwargs)
    except BaseException as exc:  # the caller decides; a worker never dies of a call
        return _encode_error(exc)
    try:
        return dumps_any((OK, result))
    except Exception as exc:
        return dumps_any((UNPICKLABLE_RESULT, (type(result).__qualname__, str(exc))))


def _initialize(fd: int, init: bytes) -> bool:
    """Run the pool's initializer and tell the parent how it went; ``False``: it failed."""
    try:
        func, args = pickle.loads(init)
        func(*args)
    except BaseException as exc:
        write_all(fd, frame(_encode_error(exc)))
        return False
    write_all(fd, frame(dumps_any((OK, None))))
    return True


def main(fd: int, init: bytes | None = None) -> None:
    """Serve calls on socket ``fd`` until the parent closes it or sends an empty frame."""
    # Own session and process group: killing the group stops the call's children too,
    # and a Ctrl-C in the terminal reaches the parent only (which then shuts us down).
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.enable()  # a segfault in C code prints the Python stack to stderr
    if init is not None and not _initialize(fd, init):
        return
    while True:
        header = _read_exact(fd, HEADER.size)
        if header is None:
            return
        (size,) = HEADER.unpack(header)
        if size == 0:
            return
        request = _read_exact(fd, size)
        if request is None:
            return
        reply = _run_one(request)
        del request
        try:
            write_all(fd, frame(reply))
        except OSError:  # the parent is gone
            return


def entry(conn: Any, init: bytes | None = None) -> None:
    """``multiprocessing.Process`` target: take the socket out of the Connection.

    ``init``: the pickled ``(initializer, initargs)`` to run first, if any.
    """
    # Under `unstall run`, which follows child processes: this worker runs no loop,
    # so it is not watched (looked up, not imported: nothing to do when not following).
    follow = sys.modules.get("unstall._cli.follow")
    if follow is not None:
        follow.leave()
    fd = conn.fileno()
    try:
        main(fd, init)
    finally:
        conn.close()
