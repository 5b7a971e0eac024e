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
import builtins
import contextlib
import functools
import importlib
import importlib.machinery
import importlib.util
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from unstall._stall import Report, Stall
from unstall._summary import render_hang_line, render_summary, should_color

__all__ = ["main"]

USAGE = (
    "usage: unstall run [--threshold S] [--json FILE] [--html FILE] [--trace FILE] "
    "[--quiet] [--strict] (script.py | -m module) [args...]"
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
  -m MODULE       run a module, like `python -m MODULE`
  -h, --help      show this help

The program's stdout, stderr and exit status are its own; unstall writes to stderr."""

_JSON_REWRITE_S = 0.5


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
    module: str | None = None
    script: str | None = None
    args: list[str] = field(default_factory=list)


_VALUED = {"--threshold": "threshold", "--json": "json", "--html": "html", "--trace": "trace"}
_FLAGS = {"--quiet": "quiet", "-q": "quiet", "--strict": "strict"}


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
            setattr(opts, _FLAGS[arg], True)
        elif arg == "-m" or arg.startswith("-m"):
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


# --- the program, prepared the way python itself prepares it --------------------------------


@dataclass
class Program:
    code: types.CodeType
    argv0: str
    path0: str
    attrs: dict[str, Any]


def prepare(opts: Options) -> Program:
    """Find and compile the program; raises :class:`UsageError` if it cannot be run."""
    if opts.module is not None:
        return _prepare_module(opts.module)
    assert opts.script is not None
    return _prepare_path(opts.script)


def _prepare_path(script: str) -> Program:
    if not os.path.exists(script):
        raise UsageError(f"can't open file {os.path.abspath(script)!r}: no such file")
    if os.path.isdir(script) or _is_zip(script):
        spec = importlib.machinery.PathFinder.find_spec("__main__", [os.path.abspath(script)])
        if spec is None or spec.loader is None:
            raise UsageError(f"can't find '__main__' module in {script!r}")
        return Program(_code_of(spec), script, os.path.abspath(script), _spec_attrs(spec, ""))
    path = os.path.abspath(script)
    loader: importlib.abc.FileLoader
    if path.endswith(".pyc"):
        loader = importlib.machinery.SourcelessFileLoader("__main__", path)
    else:
        loader = importlib.machinery.SourceFileLoader("__main__", path)
    try:
        code = _compile_file(path, loader)
    except OSError as exc:
        raise UsageError(f"can't open file {path!r}: {exc.strerror or exc}") from None
    except SyntaxError:
        raise  # python reports these without a traceback and exit 1; main() does the same
    except (ValueError, ImportError, EOFError) as exc:
        raise UsageError(f"can't run {path!r}: {exc}") from None
    attrs = {"__file__": path, "__loader__": loader, "__spec__": None, "__package__": None}
    attrs["__cached__"] = None
    return Program(code, script, os.path.dirname(os.path.realpath(path)), attrs)


def _compile_file(path: str, loader: importlib.abc.FileLoader) -> types.CodeType:
    if isinstance(loader, importlib.machinery.SourcelessFileLoader):
        code = loader.get_code("__main__")
        if code is None:
            raise ImportError("no code object in the file")
        return code
    with open(path, "rb") as f:
        source = f.read()
    return compile(source, path, "exec", dont_inherit=True)


def _prepare_module(name: str) -> Program:
    path0 = os.getcwd()
    _set_path0(path0)  # so the module is found where `python -m` would find it
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            main_name = f"{name}.__main__"
            spec = importlib.util.find_spec(main_name)
            if spec is None:
                raise UsageError(
                    f"no module named {main_name}; {name!r} is a package and cannot be run"
                )
    except (ImportError, ValueError) as exc:
        raise UsageError(f"error while finding module {name!r}: {exc}") from None
    if spec is None or spec.loader is None or spec.origin is None:
        raise UsageError(f"no module named {name}")
    return Program(_code_of(spec), spec.origin, path0, _spec_attrs(spec, spec.parent))


def _set_path0(path0: str) -> None:
    """Put the program's directory first on ``sys.path``, where unstall's own entry was.

    Under ``python -P`` (safe path) python adds no such entry, and neither do we.
    """
    if not sys.flags.safe_path:
        sys.path[0:1] = [path0]


def _is_zip(path: str) -> bool:
    import zipfile

    return os.path.isfile(path) and zipfile.is_zipfile(path)


def _code_of(spec: importlib.machinery.ModuleSpec) -> types.CodeType:
    loader = spec.loader
    get_code = getattr(loader, "get_code", None)
    code = get_code(spec.name) if get_code is not None else None
    if code is None:
        raise UsageError(f"no code to run in {spec.origin or spec.name!r}")
    assert isinstance(code, types.CodeType)
    return code


def _spec_attrs(spec: importlib.machinery.ModuleSpec, package: str | None) -> dict[str, Any]:
    return {
        "__file__": spec.origin,
        "__loader__": spec.loader,
        "__spec__": spec,
        "__package__": package,
        "__cached__": spec.cached,
    }


class _ProgramExit(Exception):
    """Carries the program's exit status out of :func:`execute`."""

    def __init__(self, status: int | str | None, interrupted: bool = False) -> None:
        super().__init__(status)
        self.status = status
        self.interrupted = interrupted


def execute(program: Program, args: list[str]) -> int:
    """Run ``program`` as ``__main__`` and return its exit status, as python would.

    ``SystemExit`` propagates unchanged (python prints its message). Any other exception
    is printed through ``sys.excepthook`` with unstall's own frames cut off, and gives 1.
    A ``KeyboardInterrupt`` is re-raised after the summary, as python does, so the
    process ends by SIGINT.
    """
    module = types.ModuleType("__main__")
    module.__dict__.update(program.attrs, __builtins__=builtins)
    sys.argv[:] = [program.argv0, *args]
    _set_path0(program.path0)
    sys.modules["__main__"] = module
    try:
        exec(program.code, module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        if isinstance(exc, KeyboardInterrupt):
            _session_end_by_sigint()
            return 130
        return 1
    return 0


def _session_end_by_sigint() -> None:
    global _end_by_sigint
    _end_by_sigint = True


_end_by_sigint = False


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
        self._writers = _load_writers(opts)
        self._started_at, self._started_mono = time.time(), time.monotonic()
        if opts.json:
            _check_writable(opts.json, "--json")
        for flag, path in (("--html", opts.html), ("--trace", opts.trace)):
            if path:
                _check_writable(path, flag)
        import unstall

        global _stderr
        _stderr = sys.stderr
        self._color = should_color(sys.stderr)
        if opts.strict:
            self._uninstall_strict = _load_strict()
        try:
            self.watcher = unstall.watch(
                threshold=opts.threshold, on_stall=self._on_stall, on_hang=self._on_hang, log=False
            )
        except Exception as exc:  # a broken watcher must be one clear line, not a traceback
            if self._uninstall_strict is not None:
                self._uninstall_strict()
            raise UsageError(f"cannot start the watcher: {exc!r}") from None
        if opts.json:
            try:  # an empty report now: proves the path works, and a kill leaves a file
                self.report().write(opts.json)
            except OSError as exc:
                self.watcher.stop()
                raise UsageError(
                    f"cannot write --json {opts.json!r}: {exc.strerror or exc}"
                ) from None
            threading.Thread(target=self._json_loop, name="unstall-run-json", daemon=True).start()

    # callbacks, called by the watcher from its own thread (or the loop's) -----------------

    def _on_stall(self, stall: Stall) -> None:
        with self._lock:
            self._ongoing.pop((stall.thread_id, stall.loop), None)
        self._dirty.set()

    def _on_hang(self, stall: Stall) -> None:
        with self._lock:
            previous = self._ongoing.get((stall.thread_id, stall.loop))
            self._ongoing[(stall.thread_id, stall.loop)] = stall
        if not self.opts.quiet and _worth_a_line(previous, stall):
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
        known = {(s.thread_id, s.loop, round(s.start_s, 1)) for s in report.stalls}
        for stall in ongoing:
            if (stall.thread_id, stall.loop, round(stall.start_s, 1)) not in known:
                report.stalls.append(stall)
        report.stalls = sorted((_without_runner(s) for s in report.stalls), key=lambda s: s.start_s)
        return report

    def _write_json(self, report: Report | None = None) -> None:
        assert self.opts.json is not None
        with self._write_lock:
            self._dirty.clear()
            if report is None and self._done:
                return  # the final report is written by finish()
            try:
                (report or self.report()).write(self.opts.json)
            except OSError as exc:
                _say(f"unstall run: cannot write {self.opts.json!r}: {exc.strerror or exc}")

    def _json_loop(self) -> None:
        while not self._done:
            if self._dirty.wait(1.0) and not self._done:
                self._write_json()
                time.sleep(_JSON_REWRITE_S)

    # the end ---------------------------------------------------------------------------------

    def finish(self) -> None:
        """Stop watching, print the summary and write the files; runs once, at exit."""
        if self._done:
            return
        self._done = True
        _flush_std()
        if self._uninstall_strict is not None:
            _call_quietly(self._uninstall_strict, "uninstall strict mode")
        try:
            self.watcher.stop()
        except Exception as exc:
            _say(f"unstall run: stopping the watcher failed ({exc!r})")
        report = self.report()
        _say(render_summary(report, color=self._color))
        if self.opts.json:
            self._write_json(report)
        for attr, path in (("html", self.opts.html), ("trace", self.opts.trace)):
            writer = self._writers.get(attr)
            if path and writer is not None:
                _call_quietly(functools.partial(writer, report, path), f"write {path!r}")
        _flush_std()


# Live lines of a long hang thin out (the --json file still follows every update).
_MILESTONES_S = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)


def _worth_a_line(previous: Stall | None, stall: Stall) -> bool:
    """A new hang, a hang that moved to another line, or one that passed a milestone."""
    if previous is None or abs(previous.start_s - stall.start_s) > 1e-3:
        return True
    if previous.culprit != stall.culprit:
        return True
    before, now = previous.duration_s, stall.duration_s
    passed = [m for m in _MILESTONES_S if before < m <= now]
    return bool(passed) or (now >= 60.0 and before // 60.0 != now // 60.0)


def _without_runner(stall: Stall) -> Stall:
    """Drop the frames of python's and unstall's start-up above the program's ``<module>``."""
    for index, frame in enumerate(stall.stack):
        if frame.file == __file__ and frame.function == "execute":
            return stall.with_updates(stack=stall.stack[index + 1 :])
    return stall


def _load_writers(opts: Options) -> dict[str, Callable[[Report, str], None]]:
    wanted = {"html": (opts.html, "unstall._html", "write_html")}
    wanted["trace"] = (opts.trace, "unstall._trace", "write_trace")
    writers: dict[str, Callable[[Report, str], None]] = {}
    for key, (path, module, func) in wanted.items():
        if path:
            writers[key] = _import_attr(module, func, f"--{key}")
    return writers


def _load_strict() -> Callable[[], None]:
    install = _import_attr("unstall._strict", "install", "--strict")
    uninstall = install(action="warn")
    if not callable(uninstall):
        raise UsageError("--strict is not available: strict mode did not return an uninstaller")
    return uninstall  # type: ignore[no-any-return]


def _import_attr(module: str, name: str, option: str) -> Any:
    try:
        value = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UsageError(f"{option} is not available in this build of unstall") from None
    return value


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


def _finish(session: Session, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child exiting normally: the report belongs to the parent
    session.finish()
    if _end_by_sigint:
        # python ends a program killed by an uncaught KeyboardInterrupt with SIGINT itself
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


def main(argv: list[str]) -> int:
    """``unstall run``: returns the program's exit status (``SystemExit`` passes through)."""
    try:
        opts = parse_args(argv)
        if opts is None:
            print(_HELP)
            return 0
        program = prepare(opts)
    except SyntaxError as exc:
        sys.excepthook(
            type(exc), exc.with_traceback(None), None
        )  # as python reports it: no traceback, exit 1
        return 1
    except UsageError as exc:
        print(f"unstall run: {exc}", file=sys.stderr)
        return 2
    try:
        session = Session(opts, [program.argv0, *opts.args])
    except UsageError as exc:
        print(f"unstall run: {exc}", file=sys.stderr)
        return 2
    atexit.register(_finish, session, os.getpid())
    return execute(program, opts.args)
