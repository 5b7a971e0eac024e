"""Which frame of a sampled stack is to blame: the user's own code, where the time went.

A stack is split in two: the event loop's machinery (``run_forever``, ``_run_once``,
``Handle._run``, the runners) and, above it, the callback the loop is running. The culprit
is the innermost frame of the callback that belongs to the user's code (not the standard
library, not site-packages, not unstall); failing that, the innermost library frame; failing
that, the innermost frame. Across samples, the culprit line that covered the most time wins.
"""

from __future__ import annotations

import asyncio
import os
import sysconfig
from functools import lru_cache

__all__ = ["callback_start", "culprit_index", "is_machinery", "origin"]

_ASYNCIO_DIR = os.path.dirname(os.path.realpath(asyncio.__file__)) + os.sep
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__))) + os.sep  # unstall/
_STDLIB_DIRS = tuple(
    {
        os.path.realpath(p) + os.sep
        for key in ("stdlib", "platstdlib")
        if (p := sysconfig.get_paths().get(key))
    }
    | {os.path.realpath(os.path.dirname(os.__file__)) + os.sep}
)
_LIB_MARKERS = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")

# Functions of asyncio that run callbacks: the callback's own frames start above them.
_MACHINERY = frozenset(
    {"_run", "_run_once", "run_forever", "run_until_complete", "run", "_run_forever_setup"}
)


@lru_cache(maxsize=4096)
def origin(path: str) -> str:
    """Classify a code file: ``"user"``, ``"library"`` (site-packages), ``"stdlib"`` or ``"unstall"``."""
    if path.startswith("<"):
        return "stdlib" if path.startswith("<frozen") else "user"
    real = os.path.realpath(path) if os.path.isabs(path) else os.path.abspath(path)
    if any(m in real for m in _LIB_MARKERS):
        return "library"
    if real.startswith(_OWN_DIR):
        return "unstall"
    if real.startswith(_STDLIB_DIRS):
        return "stdlib"
    return "user"


_WATCH_DIR = os.path.dirname(os.path.realpath(__file__))
_STOPPING = (os.path.join(_WATCH_DIR, "watcher.py"), os.path.join(_WATCH_DIR, "watchdog.py"))


@lru_cache(maxsize=1024)
def in_the_watcher(path: str) -> bool:
    """Whether ``path`` is where a watcher stops (``Watcher.stop``, the watchdog's flush)."""
    return os.path.realpath(path) in _STOPPING


def is_machinery(path: str, function: str) -> bool:
    """Whether a frame is asyncio's loop running a callback (not the callback itself)."""
    return function in _MACHINERY and in_asyncio(path)


@lru_cache(maxsize=1024)
def in_asyncio(path: str) -> bool:
    """Whether ``path`` is a module of the asyncio package."""
    return os.path.realpath(path).startswith(_ASYNCIO_DIR)


def callback_start(files: list[str], functions: list[str]) -> int:
    """Index of the first frame of the running callback, in an outermost-first stack."""
    for i in range(len(files) - 1, -1, -1):
        if is_machinery(files[i], functions[i]):
            return i + 1
    return 0


def culprit_index(files: list[str], start: int) -> int:
    """Index of the culprit frame in an outermost-first stack, ``-1`` for an empty one."""
    n = len(files)
    if n == 0:
        return -1
    for i in range(n - 1, start - 1, -1):
        if origin(files[i]) == "user":
            return i
    for i in range(n - 1, start - 1, -1):
        if origin(files[i]) == "library":
            return i
    return n - 1
