"""The catalogue of blocking calls strict mode knows: audit events and functions to wrap.

A :class:`Rule` names a call, says how to fix it, and decides from the call's arguments
whether it would actually block (a socket with timeout 0, an unheld lock, a set event or
a write to stderr never wait). Rules reach strict mode two ways:

* :data:`AUDIT_RULES`, keyed by the :pep:`578` audit event CPython raises (these catch a
  call however the function was imported: ``from time import sleep`` included);
* :data:`PATCHES`, functions and methods replaced by a checking wrapper while strict mode
  is on (``builtin=True`` marks methods of immutable C types such as ``io.TextIOWrapper``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["AUDIT_RULES", "PATCHES", "THIRD_PARTY_PATCHES", "Patch", "Rule"]

Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Blocks = Callable[[Args, Kwargs], bool]

_THREAD = "run it in a thread: `await unstall.to_thread({call}, ...)`"
_SLEEP = "use `await asyncio.sleep(...)` instead"
_FILE = (
    "run file I/O in a thread: `await unstall.to_thread(...)` (or `await asyncio.to_thread(...)`)"
)
_SOCKET = (
    "use asyncio streams (`asyncio.open_connection`) or `loop.sock_*` on a non-blocking socket"
)
_DNS = "use `await loop.getaddrinfo(...)`, which resolves in a thread"
_PROC = (
    "use `await asyncio.create_subprocess_exec(...)` or run it in a thread with `unstall.to_thread`"
)
_LOCK = "use an `asyncio.Lock`/`asyncio.Event`/`asyncio.Queue`, or wait in a thread with `unstall.to_thread`"
_HTTP = "use an async client (`httpx.AsyncClient`, aiohttp) or run it in a thread with `unstall.to_thread`"
_SQL = "run queries in a thread with `unstall.to_thread` (or use aiosqlite)"
# What a call waits on, by its fix: the summary's "kind" column.
_KINDS = {
    _SLEEP: "sleep",
    _FILE: "file",
    _SOCKET: "network",
    _DNS: "network",
    _HTTP: "network",
    _PROC: "subprocess",
    _LOCK: "lock",
    _SQL: "database",
}


def _always(args: Args, kwargs: Kwargs) -> bool:
    return True


def _arg(args: Args, kwargs: Kwargs, index: int, name: str, default: Any) -> Any:
    """The argument at ``index`` (counting ``self``) or passed as ``name``."""
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _waits(timeout: Any) -> bool:
    """Whether a ``timeout`` argument lets the call wait at all (``None``/``-1`` = forever)."""
    return timeout is None or timeout < 0 or timeout > 0


def _sleeps(args: Args, kwargs: Kwargs) -> bool:
    secs = _arg(args, kwargs, 0, "secs", 0)
    return isinstance(secs, int | float) and secs > 0


def _blocking_socket(args: Args, kwargs: Kwargs) -> bool:
    # asyncio's own sockets (self-pipe, transports) are non-blocking: timeout 0.0.
    try:
        return bool(args[0].gettimeout() != 0.0)
    except (AttributeError, IndexError, OSError):
        return False


def _is_console(fd: int) -> bool:
    """Whether ``fd`` is a console stream, whatever ``sys.stdout`` currently is.

    The standard descriptors, the streams in ``sys`` (current and original), a terminal,
    and any descriptor for the file that descriptor 1 or 2 points to: pytest's capture
    redirects them to a temporary file, and a ``logging.StreamHandler`` created then
    keeps writing to that file after code such as click's ``CliRunner`` swaps
    ``sys.stdout`` for a buffer of its own.
    """
    if fd in (1, 2):
        return True
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if stream is not None and stream.fileno() == fd:
                return True
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    if stat.S_ISCHR(st.st_mode):
        return True
    for std in (1, 2):
        with contextlib.suppress(OSError):
            other = os.fstat(std)
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def _fd_blocks(fd: Any, *, writing: bool) -> bool:
    # Console output (print, logging to stderr, a terminal, /dev/null, pytest's capture)
    # is never flagged, as in blockbuster: it is what programs do on purpose, and rarely
    # waits.
    if not isinstance(fd, int) or (writing and _is_console(fd)):
        return False
    try:
        return os.get_blocking(fd)
    except OSError:
        return False  # a bad descriptor: let the call itself raise


def _os_read_blocks(args: Args, kwargs: Kwargs) -> bool:
    return _fd_blocks(_arg(args, kwargs, 0, "fd", None), writing=False)


def _os_write_blocks(args: Args, kwargs: Kwargs) -> bool:
    return _fd_blocks(_arg(args, kwargs, 0, "fd", None), writing=True)


def _file_blocks(stream: Any, *, writing: bool) -> bool:
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False  # in-memory or closed: no descriptor to wait on
    return _fd_blocks(fd, writing=writing)


def _file_read_blocks(args: Args, kwargs: Kwargs) -> bool:
    return _file_blocks(args[0], writing=False)


def _file_write_blocks(args: Args, kwargs: Kwargs) -> bool:
    return _file_blocks(args[0], writing=True)


def _opens_path(args: Args, kwargs: Kwargs) -> bool:
    # Audit "open": (path, mode, flags). open(fd) only wraps a descriptor already open.
    return bool(args) and not isinstance(args[0], int)


def _lock_waits(args: Args, kwargs: Kwargs) -> bool:
    # Only a lock someone else holds makes acquire() wait; the brief, uncontended
    # acquires that asyncio, logging and queues do all the time are not flagged.
    blocking = _arg(args, kwargs, 1, "blocking", True)
    timeout = _arg(args, kwargs, 2, "timeout", -1)
    return bool(blocking) and _waits(timeout) and bool(args[0].locked())


def _semaphore_waits(args: Args, kwargs: Kwargs) -> bool:
    blocking = _arg(args, kwargs, 1, "blocking", True)
    timeout = _arg(args, kwargs, 2, "timeout", None)
    return bool(blocking) and _waits(timeout) and getattr(args[0], "_value", 1) == 0


def _event_waits(args: Args, kwargs: Kwargs) -> bool:
    return _waits(_arg(args, kwargs, 1, "timeout", None)) and not args[0].is_set()


def _timeout_waits(args: Args, kwargs: Kwargs) -> bool:
    return _waits(_arg(args, kwargs, 1, "timeout", None))


def _wait_for_waits(args: Args, kwargs: Kwargs) -> bool:
    return _waits(_arg(args, kwargs, 2, "timeout", None))


def _join_waits(args: Args, kwargs: Kwargs) -> bool:
    return _waits(_arg(args, kwargs, 1, "timeout", None)) and args[0].is_alive()


def _queue_get_waits(args: Args, kwargs: Kwargs) -> bool:
    block = _arg(args, kwargs, 1, "block", True)
    timeout = _arg(args, kwargs, 2, "timeout", None)
    return bool(block) and _waits(timeout) and args[0].empty()


def _queue_put_waits(args: Args, kwargs: Kwargs) -> bool:
    block = _arg(args, kwargs, 2, "block", True)
    timeout = _arg(args, kwargs, 3, "timeout", None)
    return bool(block) and _waits(timeout) and args[0].full()


def _future_waits(args: Args, kwargs: Kwargs) -> bool:
    return _waits(_arg(args, kwargs, 1, "timeout", None)) and not args[0].done()


def _process_waits(args: Args, kwargs: Kwargs) -> bool:
    return args[0].returncode is None


def _flock_waits(args: Args, kwargs: Kwargs) -> bool:
    import fcntl

    return len(args) > 1 and isinstance(args[1], int) and not args[1] & fcntl.LOCK_NB


def _audit_socket(args: Args, kwargs: Kwargs) -> bool:
    return _blocking_socket(args, kwargs)


@dataclass(frozen=True, slots=True)
class Rule:
    """A known blocking call.

    Attributes:
        call: Its name as users write it, e.g. ``"time.sleep"``; allow-lists may name it.
        fix: How to move it off the loop (``{call}`` is replaced by :attr:`call`).
        blocks: Whether this particular call would wait, from its arguments (for a
            method, ``args[0]`` is ``self``).
        minor: See below.
    """

    call: str
    fix: str
    blocks: Blocks = _always
    minor: Blocks | None = None
    """When true for the call's arguments, the call is cheap by nature (metadata of a local
    file, a small bounded read): it is reported once per call site as a warning, and fails
    only when it takes longer than the policy's budget (or with ``level="all"``)."""

    @property
    def hint(self) -> str:
        return self.fix.replace("{call}", self.call)

    @property
    def kind(self) -> str:
        """What the call waits on: network, file, sleep, lock, subprocess, database, input."""
        return _KINDS.get(self.fix, "input")


@dataclass(frozen=True, slots=True)
class Patch:
    """Where to wrap a rule: ``owner`` is ``"module"`` or ``"module:Class"``."""

    owner: str
    attr: str
    rule: Rule
    builtin: bool = False


def _audit(fix: str, blocks: Blocks, *events: str) -> dict[str, Rule]:
    return {event: Rule(event, fix, blocks) for event in events}


AUDIT_RULES: dict[str, Rule] = {
    **_audit(_FILE, _opens_path, "open"),
    **_audit(_FILE, _always, "os.listdir", "os.scandir", "os.walk", "os.fwalk", "glob.glob"),
    **_audit(_FILE, _always, "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.link"),
    **_audit(_FILE, _always, "os.symlink", "os.truncate", "os.chmod", "os.chown", "os.utime"),
    **_audit(_FILE, _always, "shutil.copyfile", "shutil.copymode", "shutil.copystat"),
    **_audit(_FILE, _always, "shutil.copytree", "shutil.rmtree", "shutil.move"),
    **_audit(_FILE, _always, "shutil.make_archive", "shutil.unpack_archive", "shutil.chown"),
    **_audit(_FILE, _always, "tempfile.mkstemp", "tempfile.mkdtemp"),
    **_audit(_LOCK, _flock_waits, "fcntl.flock", "fcntl.lockf"),
    **_audit(_DNS, _always, "socket.getaddrinfo", "socket.gethostbyname"),
    **_audit(_DNS, _always, "socket.gethostbyaddr", "socket.getnameinfo"),
    **_audit(_SOCKET, _audit_socket, "socket.connect"),
    **_audit(_HTTP, _always, "http.client.connect", "urllib.Request"),
    **_audit(_SOCKET, _always, "ftplib.connect", "smtplib.connect", "poplib.connect"),
    **_audit(_SOCKET, _always, "imaplib.open", "nntplib.connect"),
    **_audit(_PROC, _always, "subprocess.Popen", "os.system"),
    **_audit(_SQL, _always, "sqlite3.connect"),
    **_audit(_THREAD, _always, "builtins.input"),
    **_audit(_SLEEP, _sleeps, "time.sleep"),  # raised from Python 3.13 on
}


# How users know these owners; the rest are named ``module.Class``.
_LABELS = {
    "_thread:LockType": "threading.Lock",
    "requests.sessions:Session": "requests.Session",
    "urllib3.connectionpool:HTTPConnectionPool": "urllib3.HTTPConnectionPool",
    "urllib3.poolmanager:PoolManager": "urllib3.PoolManager",
}
# Aliases named after what the user wrote: ``with lock:`` is an acquire.
_ALIASES = {"__enter__": ".acquire", "acquire_lock": ".acquire", "__init__": ""}


def _call_name(owner: str, name: str) -> str:
    label = _LABELS.get(owner, owner.replace(":", "."))
    return label + _ALIASES.get(name, "." + name)


def _methods(
    owner: str, names: str, fix: str, blocks: Blocks, *, builtin: bool, minor: Blocks | None = None
) -> list[Patch]:
    return [
        Patch(owner, name, Rule(_call_name(owner, name), fix, blocks, minor), builtin)
        for name in names.split()
    ]


def _functions(
    module: str, names: str, fix: str, blocks: Blocks = _always, minor: Blocks | None = None
) -> list[Patch]:
    return [
        Patch(module, name, Rule(f"{module}.{name}", fix, blocks, minor)) for name in names.split()
    ]


_SMALL_READ = 1 << 16


def _small_read(args: Args, kwargs: Kwargs) -> bool:
    """A read of at most 64 KiB, asked for explicitly, from a regular local file."""
    size = _arg(args, kwargs, 1, "size", -1)
    return isinstance(size, int) and 0 <= size <= _SMALL_READ


_SOCKET_METHODS = (
    "connect connect_ex accept recv recv_into recvfrom recvfrom_into recvmsg recvmsg_into "
    "send sendall sendto sendmsg sendfile"
)

PATCHES: tuple[Patch, ...] = (
    *_functions("time", "sleep", _SLEEP, _sleeps),
    *_functions("os", "read readv pread", _FILE, _os_read_blocks),
    *_functions("os", "write writev pwrite", _FILE, _os_write_blocks),
    *_functions("os", "stat lstat statvfs access readlink", _FILE, _always, minor=_always),
    *_functions("os", "sendfile", _FILE),
    *_methods(
        "io:FileIO",
        "read readall readinto",
        _FILE,
        _file_read_blocks,
        builtin=True,
        minor=_small_read,
    ),
    *_methods("io:FileIO", "write", _FILE, _file_write_blocks, builtin=True),
    *_methods(
        "io:BufferedReader",
        "read read1 readinto readline peek",
        _FILE,
        _file_read_blocks,
        builtin=True,
        minor=_small_read,
    ),
    *_methods("io:BufferedWriter", "write flush", _FILE, _file_write_blocks, builtin=True),
    *_methods(
        "io:BufferedRandom", "read read1 readinto readline", _FILE, _file_read_blocks, builtin=True
    ),
    *_methods("io:BufferedRandom", "write flush", _FILE, _file_write_blocks, builtin=True),
    *_methods("io:TextIOWrapper", "read readline", _FILE, _file_read_blocks, builtin=True),
    *_methods("io:TextIOWrapper", "write", _FILE, _file_write_blocks, builtin=True),
    *_methods("socket:socket", _SOCKET_METHODS, _SOCKET, _blocking_socket, builtin=False),
    *_methods(
        "ssl:SSLSocket",
        "do_handshake read write recv recv_into send sendall",
        _SOCKET,
        _blocking_socket,
        builtin=False,
    ),
    *_functions("subprocess", "run call check_call check_output getoutput getstatusoutput", _PROC),
    *_methods("subprocess:Popen", "__init__", _PROC, _always, builtin=False),
    *_methods("subprocess:Popen", "wait communicate", _PROC, _process_waits, builtin=False),
    *_methods(
        "sqlite3:Connection",
        "execute executemany executescript commit rollback backup",
        _SQL,
        _always,
        builtin=True,
    ),
    *_methods(
        "sqlite3:Cursor",
        "execute executemany executescript fetchone fetchmany fetchall",
        _SQL,
        _always,
        builtin=True,
    ),
    *_methods(
        "_thread:LockType", "acquire acquire_lock __enter__", _LOCK, _lock_waits, builtin=True
    ),
    *_methods("threading:Semaphore", "acquire __enter__", _LOCK, _semaphore_waits, builtin=False),
    *_methods("threading:Event", "wait", _LOCK, _event_waits, builtin=False),
    *_methods("threading:Condition", "wait", _LOCK, _timeout_waits, builtin=False),
    *_methods("threading:Condition", "wait_for", _LOCK, _wait_for_waits, builtin=False),
    *_methods("threading:Barrier", "wait", _LOCK, _timeout_waits, builtin=False),
    *_methods("threading:Thread", "join", _LOCK, _join_waits, builtin=False),
    *_methods("queue:Queue", "get", _LOCK, _queue_get_waits, builtin=False),
    *_methods("queue:Queue", "put", _LOCK, _queue_put_waits, builtin=False),
    *_methods("queue:SimpleQueue", "get", _LOCK, _queue_get_waits, builtin=True),
    *_methods("concurrent.futures:Future", "result exception", _LOCK, _future_waits, builtin=False),
)

# Wrapped only when the package is installed: they give a clearer name than the
# socket-level call that would otherwise be caught deep inside them.
THIRD_PARTY_PATCHES: tuple[Patch, ...] = (
    *_methods("requests.sessions:Session", "request send", _HTTP, _always, builtin=False),
    *_methods(
        "urllib3.connectionpool:HTTPConnectionPool", "urlopen", _HTTP, _always, builtin=False
    ),
    *_methods("urllib3.poolmanager:PoolManager", "urlopen", _HTTP, _always, builtin=False),
    *_methods("httpx:Client", "send", _HTTP, _always, builtin=False),
)
