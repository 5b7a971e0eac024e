"""``unstall run`` follows every Python process the program starts.

Two routes, the way coverage.py follows subprocesses:

* A forked child (gunicorn's workers, ``multiprocessing`` fork and forkserver, ``os.fork``)
  runs the ``os.register_at_fork`` hook installed here: the parent's watchdog thread did not
  survive the fork, so the child drops the parent's watch state and starts its own watcher.
* A new interpreter (``multiprocessing`` spawn, uvicorn ``--workers``,
  ``ProcessPoolExecutor``, ``subprocess.run([sys.executable, ...])``) inherits the
  environment variable :data:`ENV`, naming the run directory, and a ``PYTHONPATH`` that
  starts with :data:`BOOT_DIR`. That folder holds a ``sitecustomize`` module, which
  ``site`` imports at the interpreter's start-up; it calls :func:`start_in_child`, then
  imports the ``sitecustomize`` it hides (see ``follow_boot/sitecustomize.py``). Nothing
  is installed in site-packages: when unstall is not running, no start-up runs any of
  its code (``unstall bench startup`` checks it).

Each child writes its findings to its own part file in the run directory
(:mod:`unstall._report.parts`), as they happen (a stall once it passes the threshold, then
again at its end); the parent merges the parts at exit and
removes the directory. Live "stuck" lines from a child go to its stderr (usually the
parent's), naming its pid.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import FrameType
from typing import Any

from unstall._report.parts import PartWriter
from unstall._report.records import LoopInfo, Stall
from unstall._report.summary import hang_worth_a_line, render_hang_line

__all__ = ["ENV", "FollowOptions", "begin", "leave", "start_in_child"]

ENV = "UNSTALL_FOLLOW"
"""Set for the program and its children: the run directory where parts are written."""

BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "follow_boot")
"""Put first on the children's ``PYTHONPATH``: its ``sitecustomize`` starts following."""
_PYTHONPATH = "PYTHONPATH"

_OPTIONS_FILE = "options.json"
_PREFIX = "unstall-run-"  # then the pid of `unstall run`, so a stale directory is known
_STOP_S = 5.0
# multiprocessing's helper processes run no user code: not worth a part.
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


@dataclass(frozen=True)
class FollowOptions:
    """What every followed process is watched with (``unstall run``'s options)."""

    threshold: float
    quiet: bool = False
    strict: bool = False
    color: bool = False


# This process's state: the run directory and options once following, and the child
# session when this process is a followed child.
_run_dir: str | None = None
_options: FollowOptions | None = None
_child: _Child | None = None
_hooked = False
_pythonpath: tuple[str | None, str] | None = None  # (the program's own, the one we set)


def begin(options: FollowOptions) -> str:
    """In ``unstall run``'s process: make the run directory and follow children from now.

    Returns the run directory; the caller merges the parts found there and removes it.
    """
    _remove_stale_run_dirs()
    run_dir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    with open(os.path.join(run_dir, _OPTIONS_FILE), "w", encoding="utf-8") as f:
        json.dump(asdict(options), f)
    os.environ[ENV] = run_dir
    _boot_children()
    _follow(run_dir, options)
    return run_dir


def _boot_children() -> None:
    """Put :data:`BOOT_DIR` first on ``PYTHONPATH``, for the interpreters started from now."""
    global _pythonpath
    own = os.environ.get(_PYTHONPATH)
    ours = BOOT_DIR + (os.pathsep + own if own else "")
    os.environ[_PYTHONPATH] = ours
    _pythonpath = (own, ours)


def _remove_stale_run_dirs() -> None:
    """Run directories of runs that ended by ``os._exit`` or SIGKILL (no exit code ran)."""
    base = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            pid = name[len(_PREFIX) :].split("-", 1)[0]
            if name.startswith(_PREFIX) and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def end() -> None:
    """In ``unstall run``'s process, at exit: children started from now are not followed."""
    global _run_dir, _pythonpath
    os.environ.pop(ENV, None)
    _run_dir = None
    if _pythonpath is not None:
        own, ours = _pythonpath
        _pythonpath = None
        if os.environ.get(_PYTHONPATH) == ours:  # the program may have set its own since
            if own is None:
                os.environ.pop(_PYTHONPATH, None)
            else:
                os.environ[_PYTHONPATH] = own


def start_in_child() -> None:
    """Called at a new interpreter's start-up (``sitecustomize``) when :data:`ENV` is set."""
    try:
        _start_from_env()
    except Exception as exc:  # never break the child's start-up for our sake
        _say(f"unstall [pid {os.getpid()}]: cannot watch this process: {exc!r}")


def leave() -> None:
    """This process is unstall's own worker: stop watching it, keep no part of it."""
    global _child, _run_dir
    child, _child, _run_dir = _child, None, None
    if child is not None:
        child.finish(discard=True)


def _start_from_env() -> None:
    if _child is not None and _child.pid == os.getpid():
        return  # site.main() may run twice (python 3.11 in a venv): one watcher
    run_dir = os.environ.get(ENV)
    if not run_dir or not os.path.isdir(run_dir):
        return  # the run that set it is over (a long-lived grandchild)
    with open(os.path.join(run_dir, _OPTIONS_FILE), encoding="utf-8") as f:
        options = FollowOptions(**json.load(f))
    command = " ".join(getattr(sys, "orig_argv", sys.argv))
    _follow(run_dir, options)  # a forkserver's forks are followed, even if it is not
    if any(helper in command for helper in _HELPERS):
        return
    _start_child(run_dir, options, _command_role())


def _follow(run_dir: str, options: FollowOptions) -> None:
    global _run_dir, _options, _hooked
    _run_dir, _options = run_dir, options
    if not _hooked:
        os.register_at_fork(after_in_child=_after_fork)
        _hooked = True


def _after_fork() -> None:
    global _child
    if _run_dir is None or _options is None:
        return
    try:
        old, _child = _child, None
        if old is not None:
            old.abandon()
        from unstall._watch.watchdog import monitor

        monitor.forget_after_fork()
        _start_child(_run_dir, _options, _fork_role(), forked=True)
    except Exception as exc:
        _say(f"unstall [pid {os.getpid()}]: cannot watch this forked process: {exc!r}")


def _start_child(run_dir: str, options: FollowOptions, role: str, forked: bool = False) -> None:
    global _child
    _child = _Child(run_dir, options, role)
    atexit.register(_child.finish)
    if forked and "multiprocessing.util" in sys.modules:
        # multiprocessing's forked children end with os._exit after its own exit function
        # (no atexit); its finalizer registry is cleared when the child bootstraps, so the
        # finalizer is registered by an after-fork callback that runs then.
        from multiprocessing import util

        util.register_after_fork(_child, _Child.finish_with_multiprocessing)


class _Child:
    """A followed child: its watcher, its part file and its live lines."""

    def __init__(self, run_dir: str, options: FollowOptions, role: str) -> None:
        from unstall._watch.watcher import Watcher

        self.options = options
        self.pid = os.getpid()
        self._default_role = role
        self._done = False
        self._lock = threading.Lock()
        self._loops_seen: set[str] = set()
        self._hangs: dict[tuple[int, str], Stall] = {}  # the last live record of each loop
        self.started_at, self._t0 = time.time(), time.monotonic()
        self.part = PartWriter(run_dir, self.pid, self.role(), self.started_at)
        self._uninstall_strict = _install_strict() if options.strict else None
        self.watcher = Watcher(
            None, options.threshold, self._on_stall, self._on_hang, False, on_loop=self._on_loop
        )._start()

    def role(self) -> str:
        """Known late for multiprocessing's children: asked each time it is written."""
        process = sys.modules.get("multiprocessing.process")
        current = process.current_process() if process is not None else None
        if current is None or process is None or process.parent_process() is None:
            return self._default_role
        target = getattr(current, "_target", None)
        if str(getattr(target, "__module__", "")).startswith("uvicorn"):
            return f"uvicorn worker {current.name}"
        return str(current.name)

    def _on_stall(self, stall: Stall) -> None:
        if os.getpid() == self.pid:
            self.part.stall(stall.with_updates(pid=self.pid, process=self.role()))

    def _on_loop(self, loop: LoopInfo) -> None:
        # asyncio.run() starts its loop three times (main, async generators, executor)
        if os.getpid() == self.pid and loop.id not in self._loops_seen:
            self._loops_seen.add(loop.id)
            self.part.loop(loop, self.role())

    def _on_hang(self, stall: Stall) -> None:
        if os.getpid() != self.pid:
            return
        stall = stall.with_updates(pid=self.pid, process=self.role())
        # Written first: the process may die before the stall's end is written.
        self.part.hang(stall)
        key = (stall.thread_id, stall.loop)
        previous, self._hangs[key] = self._hangs.get(key), stall
        if not self.options.quiet and hang_worth_a_line(previous, stall):
            line = render_hang_line(stall, color=self.options.color)
            _say(line.replace("unstall:", f"unstall [pid {self.pid}, {self.role()}]:", 1))

    def finish_with_multiprocessing(self) -> None:
        from multiprocessing import util

        util.Finalize(None, self.finish, exitpriority=-100)

    def finish(self, discard: bool = False) -> None:
        """Stop watching and write the part's end (at exit; idempotent)."""
        with self._lock:
            if self._done or os.getpid() != self.pid:
                return
            self._done = True
        if self._uninstall_strict is not None:
            with contextlib.suppress(Exception):
                self._uninstall_strict()
        stopper = threading.Thread(target=self.watcher.stop, name="unstall-follow-stop")
        stopper.daemon = True
        try:
            stopper.start()
            stopper.join(_STOP_S)  # exit must never hang on the watcher
        except RuntimeError:  # Python 3.12 starts no thread at interpreter shutdown (atexit)
            with contextlib.suppress(Exception):
                self.watcher.stop()
        if not discard:
            with contextlib.suppress(Exception):
                loops = self.watcher.report().loops
                self.part.end(time.monotonic() - self._t0, self.role(), loops)
        self.part.close(discard=discard)

    def abandon(self) -> None:
        """In a forked child: this session is the parent's; drop it without writing."""
        self._done = True


def _install_strict() -> Callable[[], None] | None:
    install: Any = importlib.import_module("unstall._strict.api").install
    uninstall = install(action="warn")
    return uninstall if callable(uninstall) else None


def _command_role() -> str:
    """A new interpreter's role before multiprocessing names it: its command line."""
    argv = list(getattr(sys, "orig_argv", sys.argv))[1:]
    shown = " ".join(argv)
    if "multiprocessing" in shown:  # named by multiprocessing once it bootstraps
        return "multiprocessing child"
    return "python " + (shown if len(shown) <= 60 else shown[:57] + "...")


def _fork_role() -> str:
    """A forked child's role, from the code that forked it (gunicorn names its workers)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "spawn_worker" and "gunicorn" in code.co_filename:
            age = getattr(frame.f_locals.get("worker"), "age", None)
            return "gunicorn worker" + (f" {age}" if age is not None else "")
        frame = frame.f_back
    return f"fork of pid {os.getppid()}"


def _say(text: str) -> None:
    stream = sys.__stderr__ or sys.stderr
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stream.write(text + "\n")
        stream.flush()
