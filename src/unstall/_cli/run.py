"""``unstall run``: run a Python program exactly as ``python`` would, and report its loop stalls.

The program is executed in this interpreter, in a fresh ``__main__`` module, with the
``sys.argv``, ``sys.path[0]``, module attributes and exit status ``python script.py`` or
``python -m module`` would give it (the same recipe coverage.py and cProfile follow).
A process-wide watcher started beforehand sees every asyncio loop the program starts.

The summary is printed from an ``atexit`` hook registered before the program runs, so it
comes after the program's own ``atexit`` hooks and after its non-daemon threads finished,
whether the program returned, called ``sys.exit``, raised or was interrupted. ``os._exit``
skips ``atexit``: for that case the ``--json`` file is rewritten while stalls happen and
while a hang lasts, so it names the stuck line even if the process dies in the middle.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from unstall._cli import follow as _follow
from unstall._cli.launch import LaunchError, Outcome, execute, is_launch_frame, prepare
from unstall._report.format import should_color
from unstall._report.incidents import contain, notes_since
from unstall._report.parts import merge, read_parts, remove_run_dir
from unstall._report.records import Report, Stall
from unstall._report.summary import hang_worth_a_line, render_hang_line, render_summary
from unstall._report.writers import WRITERS, Writer

__all__ = ["main"]

USAGE = (
    "usage: unstall run [--threshold S] [--json FILE] [--html FILE] [--trace FILE] "
    "[--quiet] [--strict] [--anyio] [--no-follow] (script.py | -m module) [args...]"
)

_HELP = f"""{USAGE}

Run a Python program exactly as `python` would and report what stalled its asyncio
event loops (every loop, in any thread, uvloop included), with no change to the program.

options (before the script or -m; everything after belongs to the program):
  --threshold S   report blocks of the loop longer than S seconds (default 0.1)
  --json FILE     write the report as JSON; rewritten during hangs, so it survives a kill
  --html FILE     write a self-contained HTML timeline of the run
  --trace FILE    write a Chrome/Perfetto trace of the run
  --quiet         print only the final summary, not the live "stuck" lines
  --strict        also warn about known blocking calls made on the loop
  --anyio         run anyio.to_thread.run_sync (FastAPI and Starlette `def` endpoints,
                  sync dependencies, background tasks) on unstall's threads
  --no-follow     watch this process only, not the Python processes it starts
                  (by default forked and spawned children and Python subprocesses are
                  watched too, and their stalls are merged into one report)
  -m MODULE       run a module, like `python -m MODULE`
  -h, --help      show this help

The program's stdout, stderr and exit status are its own; unstall writes to stderr."""

_JSON_REWRITE_S = 0.5
_STUCK_S = 5.0  # how long exit waits for the watcher before reporting what it has


class UsageError(Exception):
    """Bad input on the command line: reported as one line, exit status 2."""


@dataclass
class Options:
    threshold: float = 0.1
    json: str | None = None
    html: str | None = None
    trace: str | None = None
    quiet: bool = False
    strict: bool = False
    anyio: bool = False
    follow: bool = True
    module: str | None = None
    script: str | None = None
    args: list[str] = field(default_factory=list)

    def outputs(self) -> list[tuple[Writer, str]]:
        """The files asked for, each with its writer: ``--json`` first."""
        paths = ((w, getattr(self, w.name)) for w in WRITERS.values())
        return [(w, path) for w, path in paths if path]


# Every report writer is an option of its own name (--json, --html, --trace).
_VALUED = {"--threshold": "threshold", **{w.option: w.name for w in WRITERS.values()}}
_FLAGS = {
    "--quiet": "quiet",
    "-q": "quiet",
    "--strict": "strict",
    "--anyio": "anyio",
    "--no-follow": "follow",
}


def parse_args(argv: list[str]) -> Options | None:
    """Parse ``unstall run``'s arguments; ``None`` means help was asked for."""
    opts = Options()
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if arg in ("-h", "--help"):
            return None
        if arg == "--":
            i += 1
            break
        if name in _VALUED:
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"option {name} needs a value")
            setattr(opts, _VALUED[name], _threshold(value) if name == "--threshold" else value)
        elif arg in _FLAGS:
            setattr(opts, _FLAGS[arg], arg != "--no-follow")
        elif arg.startswith("-m"):  # "-m mod" or "-mmod", as python accepts
            module = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not module:
                raise UsageError("option -m needs a module name")
            opts.module, opts.args = module, argv[i + (1 if arg[2:] else 2) :]
            return opts
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown option {arg!r} (options go before the script)")
        else:
            break
        i += 1
    if i >= len(argv):
        raise UsageError("no script or -m module given")
    opts.script, opts.args = argv[i], argv[i + 1 :]
    return opts


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--threshold must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--threshold must be a positive number of seconds, not {text!r}")
    return value


# --- the watching session ---------------------------------------------------------------------


class Session:
    """The watcher, the live lines, the ``--json`` rewrites and the final outputs."""

    def __init__(self, opts: Options, argv: list[str]) -> None:
        self.opts = opts
        self.argv = argv
        self._lock = threading.Lock()
        self._ongoing: dict[tuple[int, str], Stall] = {}
        self._dirty = threading.Event()
        self._write_lock = threading.Lock()
        self._done = False
        self._color = False
        self._uninstall_strict: Callable[[], None] | None = None
        self._json = WRITERS["json"]
        self._run_dir: str | None = None
        self._started_at, self._started_mono = time.time(), time.monotonic()
        for writer, path in opts.outputs():
            _check_writable(path, writer.option)
            _load_writer(writer)
        from unstall._watch.watcher import watch

        global _stderr
        _stderr = sys.stderr
        self._color = should_color(sys.stderr)
        if opts.anyio:
            _install_anyio()
        if opts.strict:
            self._uninstall_strict = _load_strict()
        try:
            self.watcher = watch(
                threshold=opts.threshold, on_stall=self._on_stall, on_hang=self._on_hang, log=False
            )
        except Exception as exc:  # a broken watcher must be one clear line, not a traceback
            if self._uninstall_strict is not None:
                self._uninstall_strict()
            raise UsageError(f"cannot start the watcher: {exc!r}") from None
        if opts.json:
            try:  # an empty report now: proves the path works, and a kill leaves a file
                self._json.write(self.report(), opts.json)
            except OSError as exc:
                self.watcher.stop()
                raise UsageError(
                    f"cannot write --json {opts.json!r}: {exc.strerror or exc}"
                ) from None
            except Exception as exc:
                contain("the --json writer", "the --json file is stale", exc)
        if opts.json:
            threading.Thread(target=self._json_loop, name="unstall-run-json", daemon=True).start()

    def follow_children(self) -> None:
        """Watch the Python processes the program starts too (``main`` calls it last)."""
        opts = self.opts
        self._run_dir = _follow.begin(
            _follow.FollowOptions(opts.threshold, opts.quiet, opts.strict, self._color)
        )

    # callbacks, called by the watcher from its own thread (or the loop's) -----------------

    def _on_stall(self, stall: Stall) -> None:
        with self._lock:
            self._ongoing.pop((stall.thread_id, stall.loop), None)
        self._dirty.set()

    def _on_hang(self, stall: Stall) -> None:
        with self._lock:
            previous = self._ongoing.get((stall.thread_id, stall.loop))
            self._ongoing[(stall.thread_id, stall.loop)] = stall
        if not self.opts.quiet and hang_worth_a_line(previous, stall):
            _say(render_hang_line(stall, color=self._color))
        self._dirty.set()  # written by our own thread: never block the watcher's

    # the report ------------------------------------------------------------------------------

    def report(self) -> Report:
        try:
            report = self.watcher.report()
        except Exception as exc:  # the watcher's problem must not lose what we know
            _say(f"unstall run: could not build the full report ({exc!r})")
            report = Report(self.opts.threshold, stalls=list(self.watcher.stalls))
        if not report.argv:
            report.argv = list(self.argv)
        if not report.started_at:
            report.started_at = self._started_at
        if not report.duration_s:
            report.duration_s = time.monotonic() - self._started_mono
        with self._lock:
            ongoing = list(self._ongoing.values())
        report.stalls += [o for o in ongoing if not any(o.same_as(s) for s in report.stalls)]
        report.stalls = sorted((_without_runner(s) for s in report.stalls), key=lambda s: s.start_s)
        return self._merged(report)

    def _merged(self, report: Report) -> Report:
        """With the children's parts, when following them (else as it is)."""
        if self._run_dir is None:
            return report
        return merge(report, read_parts(self._run_dir), os.getpid(), "main")

    def _write_json(self, report: Report | None = None) -> None:
        assert self.opts.json is not None
        if not self._write_lock.acquire(timeout=_STUCK_S):
            _say(f"unstall run: gave up writing {self.opts.json!r}: a rewrite is stuck")
            return
        try:
            self._dirty.clear()
            if report is None and self._done:
                return  # the final report is written by finish()
            self._json.write(report or self.report(), self.opts.json)
        except OSError as exc:
            _say(f"unstall run: cannot write {self.opts.json!r}: {exc.strerror or exc}")
        except Exception as exc:
            contain("the --json writer", "the --json file is stale", exc)
        finally:
            self._write_lock.release()

    def _json_loop(self) -> None:
        try:
            self._json_rewrites()
        except Exception as exc:
            contain("the --json rewriter", "the --json file is not rewritten during the run", exc)

    def _json_rewrites(self) -> None:
        sizes: dict[str, int] = {}
        while not self._done:
            dirty = self._dirty.wait(1.0)
            if self._run_dir is not None:  # a child's new stall is written by the child
                sizes, before = _part_sizes(self._run_dir), sizes
                dirty = dirty or sizes != before
            if dirty and not self._done:
                started = time.monotonic()
                self._write_json()
                # a big report rewritten often would tax the program: stay under ~5% of a core
                time.sleep(max(_JSON_REWRITE_S, 20 * (time.monotonic() - started)))

    # the end ---------------------------------------------------------------------------------

    def finish(self) -> None:
        """Stop watching, print the summary and write the files; runs once, at exit."""
        if self._done:
            return
        self._done = True
        _flush_std()
        if self._uninstall_strict is not None:
            _call_quietly(self._uninstall_strict, "uninstall strict mode")
        report = self._final_report()
        if self._run_dir is not None:
            _follow.end()
            remove_run_dir(self._run_dir)  # merged into the report: leave no file behind
        try:
            _say(render_summary(report, color=self._color))
        except Exception as exc:
            lost = f"no summary ({len(report.stalls)} stalls)"
            _say("unstall run: " + contain("the summary", lost, exc))
        if self.opts.json:
            self._write_json(report)
        for writer, path in self.opts.outputs():
            if writer is not self._json:  # written above, under the rewrite lock
                _call_quietly(functools.partial(writer.write, report, path), f"write {path!r}")
        _flush_std()

    def _final_report(self) -> Report:
        """Stop the watcher and take its report, within a bound: exit must never hang."""
        try:
            _within(_STUCK_S, self.watcher.stop)
            return _within(_STUCK_S, self.report)
        except TimeoutError:
            _say(f"unstall run: the watcher did not stop within {_STUCK_S:g} s; partial report")
        except Exception as exc:
            _say(f"unstall run: stopping the watcher failed ({exc!r}); partial report")
        with self._lock:
            stalls = [*self.watcher.stalls, *self._ongoing.values()]
        notes = notes_since(self._started_mono)
        partial = Report(self.opts.threshold, stalls=stalls, argv=list(self.argv), notes=notes)
        partial.started_at = self._started_at
        return self._merged(partial)


def _part_sizes(run_dir: str) -> dict[str, int]:
    sizes = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(run_dir):
            with contextlib.suppress(OSError):
                sizes[entry.name] = entry.stat().st_size
    return sizes


T = TypeVar("T")


def _within(seconds: float, func: Callable[[], T]) -> T:
    """``func()`` run in a daemon thread; ``TimeoutError`` if it takes longer than ``seconds``."""
    box: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            box.append(func())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="unstall-run-finish", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # Python 3.12 starts no thread at interpreter shutdown (atexit)
        return func()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if errors:
        raise errors[0]
    return box[0]


def _without_runner(stall: Stall) -> Stall:
    """Drop the frames of python's and unstall's start-up above the program's ``<module>``."""
    for index, frame in enumerate(stall.stack):
        if is_launch_frame(frame.file, frame.function):
            return stall.with_updates(stack=stall.stack[index + 1 :])
    return stall


def _load_writer(writer: Writer) -> None:
    """Import the writer's renderer now: once the program runs, its ``sys.path`` and its
    own modules (an ``html.py`` next to the script...) could shadow what it imports."""
    try:
        writer.load()
    except ImportError as exc:
        raise UsageError(
            f"{writer.option} is not available in this build of unstall: {exc}"
        ) from None


def _install_anyio() -> None:
    try:
        from unstall.integrations.anyio import install

        install()
    except (ImportError, RuntimeError) as exc:
        raise UsageError(f"--anyio: {exc}") from None


def _load_strict() -> Callable[[], None]:
    try:
        from unstall._strict.api import install
    except ImportError as exc:
        raise UsageError(f"--strict is not available in this build of unstall: {exc}") from None
    return install(action="warn")


def _check_writable(path: str, option: str) -> None:
    target = os.path.abspath(path)
    parent = os.path.dirname(target)
    if os.path.isdir(target):
        raise UsageError(f"cannot write {option} {path!r}: it is a directory")
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {option} {path!r}: directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (
        os.path.exists(target) and not os.access(target, os.W_OK)
    ):
        raise UsageError(f"cannot write {option} {path!r}: permission denied")


def _call_quietly(func: Callable[[], object], what: str) -> None:
    try:
        func()
    except Exception as exc:
        _say(f"unstall run: could not {what}: {exc}")


# The stderr unstall writes to: the one the program started with, even if the program
# later points sys.stderr at a log file or a buffer of its own.
_stderr: TextIO | None = None


def _say(text: str) -> None:
    for stream in (_stderr, sys.stderr, sys.__stderr__):
        if stream is None:
            continue
        try:
            stream.write(text + "\n")
            stream.flush()
            return
        except (OSError, ValueError, AttributeError):
            continue


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()


def _finish(session: Session | None, pid: int, outcome: list[Outcome]) -> None:
    if os.getpid() != pid:
        return  # a forked child exiting normally: the report belongs to the parent
    if session is not None:
        try:
            session.finish()
        except Exception as exc:  # the program's exit status stays its own
            contain("the report at exit", "the report is incomplete", exc)
    if outcome and outcome[0].interrupted:
        # python ends a program stopped by an uncaught KeyboardInterrupt with SIGINT itself
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str]) -> int:
    """``unstall run``: returns the program's exit status (``SystemExit`` passes through).

    The summary and the output files are written by an ``atexit`` hook registered before
    the program starts, so they come after the program's own hooks and threads.
    """
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"unstall run: {exc} (see `unstall run --help`)", file=sys.stderr)
        return 2
    if opts is None:
        print(_HELP)
        return 0
    try:
        program = prepare(opts.script, opts.module)
    except SyntaxError as exc:  # as python reports it: no traceback, exit 1
        sys.excepthook(type(exc), exc.with_traceback(None), None)
        return 1
    except LaunchError as exc:
        print(f"unstall run: {exc}", file=sys.stderr)
        return 2
    try:
        session: Session | None = Session(opts, [program.argv0, *opts.args])
    except UsageError as exc:
        print(f"unstall run: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # unstall's failure: the program still runs, as with python
        contain("unstall run's start", "the program ran unwatched", exc)
        session = None
    outcome: list[Outcome] = []
    atexit.register(_finish, session, os.getpid(), outcome)
    if opts.follow and session is not None:
        try:
            session.follow_children()
        except OSError as exc:
            _say(f"unstall run: cannot follow child processes ({exc}); watching this one only")
        except Exception as exc:
            contain("following child processes", "child processes are not watched", exc)
    outcome.append(execute(program, opts.args))
    return outcome[0].status
