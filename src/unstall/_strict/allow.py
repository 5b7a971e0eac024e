"""Allow-lists: which blocking calls strict mode lets through.

An entry is one of:

* a call name from the catalogue, or its prefix: ``"time.sleep"``, ``"socket"``;
* a module, matching it and its submodules: ``"mylib"``, ``"mylib.db"``;
* a qualified function or class: ``"mylib.db.Store.load"``, ``"mylib.db.Store"``;
* a file glob, recognised by a ``/``, ``*``, ``?``, ``[`` or a ``.py`` ending:
  ``"*/migrations/*.py"``, ``"tests/conftest.py"`` (relative globs match any directory).

Your entries are matched against every frame of the current callback, from the blocking
call out to the event loop, so allowing ``"mylib"`` allows what mylib calls. The built-in
entries (:data:`DEFAULT_ALLOW`) are matched only from the blocking call out to the first
frame outside the standard library: they let asyncio, the import system or pytest block
on their own behalf, never on behalf of your code that they happen to run.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sysconfig
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import FrameType

__all__ = [
    "DEFAULT_ALLOW",
    "DEFAULT_EXCEPT",
    "ENTRY_POINT_GROUP",
    "AllowList",
    "callback_frames",
    "declared_by_libraries",
    "is_installed",
    "is_stdlib",
    "own_frames",
]

DEFAULT_ALLOW: tuple[str, ...] = (
    "unstall",  # unstall's own machinery: worker handoff, watcher, reports
    "asyncio",  # the loop's own machinery (subprocess spawning, unix sockets, executors)
    "uvloop",
    "anyio",
    "concurrent.futures",  # executor bookkeeping: thread start, shutdown locks
    "threading.Thread.start",  # waits a few microseconds for the new thread to start
    "importlib",  # imports read .py/.pyc files
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    "zipimport",
    "linecache",  # tracebacks and warnings read source lines
    "tokenize",
    "inspect",  # source lookups (getsourcefile stats a file; linecache caches the text)
    "mimetypes",  # reads the system's type maps once, on first use, and caches them
    "_pytest",  # pytest internals: capture, assertion rewriting, logging plugin
    "pluggy",
    "pytest_asyncio",
    "pytest_timeout",
    "coverage",
)
# Parts of the allowed packages that do file I/O a test asks for, not on their own behalf:
# py.path's ``tmpdir.write()``/``.read()`` live in ``_pytest._py``.
DEFAULT_EXCEPT: tuple[str, ...] = ("_pytest._py",)

ENTRY_POINT_GROUP = "unstall.allow"
_log = logging.getLogger("unstall.strict")
_declared: tuple[str, ...] | None = None


def declared_by_libraries() -> tuple[str, ...]:
    """Allow-list entries installed libraries declare (read once per process).

    A library lists, under the ``unstall.allow`` entry point group, an object that is a
    list of entries or a function returning one, for the calls it makes on purpose (a
    cached, once-per-process lookup, say), as armeria does for BlockHound. An entry point
    that fails to load or gives something else is logged and skipped.
    """
    global _declared
    if _declared is None:
        found: list[str] = []
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                value = point.load()
                entries = value() if callable(value) else value
                if isinstance(entries, str) or not all(isinstance(e, str) for e in entries):
                    raise TypeError("not a list of strings")
                found.extend(entries)
            except Exception as exc:
                _log.warning("unstall.strict: skipping allow entry point %s: %s", point.name, exc)
        _declared = tuple(found)
    return _declared


_GLOB_CHARS = frozenset("/*?[\\")
_SITE_DIRS = tuple(
    {os.path.normpath(p) + os.sep for k in ("purelib", "platlib") if (p := sysconfig.get_path(k))}
)
_STDLIB_DIRS = tuple(
    {os.path.normpath(p) + os.sep for k in ("stdlib", "platstdlib") if (p := sysconfig.get_path(k))}
)
_stdlib_cache: dict[str, bool] = {}


def is_stdlib(filename: str) -> bool:
    """Whether a code object's file belongs to the standard library (cached)."""
    known = _stdlib_cache.get(filename)
    if known is None:
        known = filename.startswith("<frozen ") or (
            filename.startswith(_STDLIB_DIRS)
            and not filename.startswith(_SITE_DIRS)
            and "site-packages" not in filename
            and "dist-packages" not in filename
        )
        if len(_stdlib_cache) < 10_000:
            _stdlib_cache[filename] = known
    return known


def is_installed(filename: str) -> bool:
    """Whether a file belongs to an installed package (site-packages), not your project."""
    return (
        filename.startswith(_SITE_DIRS)
        or "site-packages" in filename
        or "dist-packages" in filename
    )


# Frames where a loop hands control to a callback: user code starts above them.
_BOUNDARIES = {
    ("events.py", "_run"),
    ("base_events.py", "run_forever"),
    ("base_events.py", "run_until_complete"),
    ("base_events.py", "_run_once"),
    ("runners.py", "run"),
}
_ASYNCIO_DIR = os.sep + "asyncio" + os.sep


def _is_boundary(frame: FrameType) -> bool:
    code = frame.f_code
    filename = code.co_filename
    if _ASYNCIO_DIR not in filename:
        return False
    return (os.path.basename(filename), code.co_name) in _BOUNDARIES


def callback_frames(frame: FrameType | None, skip: Collection[str]) -> list[FrameType]:
    """The frames of the running callback, innermost first.

    Starts at ``frame``, drops leading frames whose file is in ``skip`` (strict mode's
    own wrappers), and stops at the event loop's dispatch frame.
    """
    frames: list[FrameType] = []
    while frame is not None and frame.f_code.co_filename in skip:
        frame = frame.f_back
    while frame is not None and not _is_boundary(frame):
        frames.append(frame)
        frame = frame.f_back
    return frames


def _module_of(frame: FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) else ""


def _under(name: str, entry: str) -> bool:
    return name == entry or name.startswith(entry + ".")


@dataclass(frozen=True, slots=True)
class AllowList:
    """A compiled allow-list; :meth:`allows` is what strict mode asks per flagged call."""

    names: tuple[str, ...] = ()
    globs: tuple[str, ...] = ()
    excepted: tuple[str, ...] = ()  # modules never allowed, even under an allowed package

    @classmethod
    def compile(cls, entries: Iterable[str], excepted: Iterable[str] = ()) -> AllowList:
        """Build an allow-list; raises :class:`TypeError`/:class:`ValueError` on bad entries.

        ``excepted`` names modules (and their submodules) that no entry allows.
        """
        names: list[str] = []
        globs: list[str] = []
        for entry in entries:
            if not isinstance(entry, str):
                raise TypeError(f"allow-list entries must be strings, got {entry!r}")
            entry = entry.strip()
            if not entry:
                raise ValueError("allow-list entries must not be empty")
            is_glob = entry.endswith(".py") or bool(_GLOB_CHARS & set(entry))
            if is_glob and entry.startswith("<frozen "):
                names.append(entry)  # a frozen module's pseudo file name, matched exactly
            elif is_glob:
                globs.append(entry if os.path.isabs(entry) or entry[0] == "*" else "*/" + entry)
            else:
                names.append(entry)
        return cls(tuple(names), tuple(globs), tuple(excepted))

    def __bool__(self) -> bool:
        return bool(self.names or self.globs)

    def allows_call(self, call: str) -> bool:
        return any(_under(call, entry) for entry in self.names)

    def allows_frame(self, frame: FrameType) -> bool:
        code = frame.f_code
        return self.allows_location(_module_of(frame), code.co_qualname, code.co_filename)

    def allows_location(self, module: str, function: str, filename: str) -> bool:
        """Whether code in ``module`` (its ``function``, from ``filename``) is allowed."""
        if self.excepted and any(_under(module, e) for e in self.excepted):
            return False
        if filename in self.names:
            return True
        if any(fnmatch.fnmatchcase(filename, glob) for glob in self.globs):
            return True
        qualified = f"{module}.{function}"
        return any(_under(module, e) or _under(qualified, e) for e in self.names)

    def allows_any(self, frames: Iterable[FrameType]) -> bool:
        return any(self.allows_frame(frame) for frame in frames)


def own_frames(frames: Sequence[FrameType]) -> list[FrameType]:
    """From the innermost frame out to the first frame outside the standard library."""
    for index, frame in enumerate(frames):
        if not is_stdlib(frame.f_code.co_filename):
            return list(frames[: index + 1])
    return list(frames)
