"""The helpers every report output shares: one duration format, one path shortener, one
atomic file write, and the colour decision.

The terminal summary, the live "stuck" line, the HTML page (and its script, which
mirrors :func:`format_duration`), the pytest failure text and the ``unstall`` log all
show a duration the same way, so one stall reads the same wherever it is seen.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import sys
import sysconfig
from typing import TextIO

__all__ = ["format_duration", "short_path", "should_color", "write_atomic"]


def format_duration(seconds: float) -> str:
    """A duration for people: ``0.050 s``, ``0.25 s``, ``59.99 s``, ``1 min 05 s``, ``1 h 02 min``.

    Two decimals below a minute (three below 0.1 s, where thresholds live, so 5 ms is
    not shown as ``0.01 s``); whole seconds from a minute on; whole minutes from an
    hour on. Values are rounded, never truncated: 59.996 s is ``1 min 00 s``.
    """
    if round(seconds, 3) < 0.1:
        return f"{seconds:.3f} s"
    if round(seconds, 2) < 60:
        return f"{seconds:.2f} s"
    whole = _half_up(seconds)
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(_half_up(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def _half_up(value: float) -> int:
    """Round as JavaScript's ``Math.round`` does (62.5 -> 63), so the page's script agrees."""
    return math.floor(value + 0.5)


_PACKAGE_DIRS = ("site-packages", "dist-packages")


@functools.cache  # sysconfig expands its templates on every call: about 1 ms
def _stdlib_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(dict.fromkeys(paths[k] for k in ("stdlib", "platstdlib") if k in paths))


def _inside(path: str, base: str) -> str | None:
    """``path`` relative to ``base`` when it lies inside it, else ``None``."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return None
    return None if rel == os.curdir or rel.startswith(os.pardir) else rel


def short_path(path: str, cwd: str | None = None) -> str:
    """How a report shows a source file: short, yet telling where it is.

    An installed package's file is shown from its package on (the part after the last
    ``site-packages``), a file under ``cwd`` (default: the current directory) relative
    to it, a standard-library file from its module on, a file under the home directory
    as ``~/...``; anything else (``<string>``, another machine's path) as it is.
    """
    parts = path.replace("\\", "/").split("/")
    for marker in _PACKAGE_DIRS:
        if marker in parts[:-1]:
            index = len(parts) - 1 - parts[::-1].index(marker)
            return "/".join(parts[index + 1 :])
    if not os.path.isabs(path):
        return path
    rel = _inside(path, os.getcwd() if cwd is None else cwd)
    if rel is not None:
        return rel
    for stdlib in _stdlib_dirs():
        rel = _inside(path, stdlib)
        if rel is not None:
            return rel
    home = os.path.expanduser("~")
    rel = _inside(path, home) if home not in ("~", os.sep) else None
    return path if rel is None else os.path.join("~", rel)


_tmp_names = itertools.count()


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that a reader never sees half a file.

    The text goes to a temporary file next to ``path``, which then replaces it. If
    anything fails, ``path`` keeps its old content and the temporary file is removed.

    Raises:
        OSError: the file cannot be written (no such directory, permission denied, the
            path is a directory...).
        UnicodeEncodeError: ``text`` holds a lone surrogate.
    """
    target = os.fspath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{next(_tmp_names)}.tmp")
    # O_EXCL: never write through a file (or link) someone else put at that name;
    # 0o666 and the umask: the same permissions a plain open(path, "w") would give.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "w", encoding="utf-8", closefd=True) as file:
            file.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def should_color(stream: TextIO | None = None) -> bool:
    """Decide whether to colour output written to ``stream`` (default: ``sys.stderr``).

    ``NO_COLOR`` (any non-empty value) turns colour off, ``FORCE_COLOR`` turns it on,
    otherwise it is on only when the stream is a terminal and ``TERM`` is not ``dumb``.
    """
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR", "").lower() not in ("", "0", "false", "no"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
