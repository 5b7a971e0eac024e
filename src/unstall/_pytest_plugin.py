"""The pytest plugin: fail a test whose event loop stalls, or that blocks it in strict mode.

Loaded in every pytest run through the ``pytest11`` entry point, it does nothing (no
watcher, no wrapper, no thread) for a test unless asked:

* ``pytest --unstall[=THRESHOLD]`` or ini ``unstall_watch = true``: every test is
  watched (the loops of pytest-asyncio, anyio and ``asyncio.run`` inside a sync test);
  one that stalls a loop longer than the threshold fails, with culprit, duration, stack.
* ``pytest --unstall-strict`` or ini ``unstall_strict = true``: strict mode (action
  ``raise``) for every test: a blocking call on a loop fails the test at its line.
* ``pytest --unstall-json FILE`` (and ``--unstall-html``, ``--unstall-trace``: one option
  per report writer): watch every test, as ``--unstall``, and after the run write the
  stalls that failed tests to FILE, one lane per thread, as ``unstall run`` would.
* ``@pytest.mark.unstall(threshold=..., strict=...)`` for one test or module;
  ``@pytest.mark.unstall_allow`` lets a test block (with arguments: allow-list entries
  for strict mode only).

Fixtures run inside the test's window: a stall or blocking call in setup fails the test
itself; one in teardown is reported as an error in the test's teardown.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from unstall._exceptions import BlockingCallError
    from unstall._report.records import LoopInfo, Report, Stall
    from unstall._report.writers import Writer
    from unstall._watch.watcher import Watcher

_DEFAULT_THRESHOLD = 0.1
_STACK_LINES = 12


@dataclass(frozen=True, slots=True)
class _Settings:
    threshold: float | None  # None: not watching
    strict: bool
    allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Defaults:
    watch: bool
    threshold: float
    strict: bool


@dataclass(slots=True)
class _Problem:
    phase: str
    text: str
    error: BaseException | None = None


@dataclass(slots=True)
class _Guard:
    """What one test is watched with, and the problems found so far, by phase."""

    settings: _Settings
    collected: _Collected | None = None
    phase: str = "setup"
    watcher: Watcher | None = None
    uninstall: Callable[[], None] | None = None
    problems: list[_Problem] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def on_blocking(self, error: BlockingCallError) -> None:
        self.problems.append(_Problem(self.phase, _strict_text(error, self.phase), error))

    def start_phase(self, phase: str) -> None:
        self.phase = phase
        if self.settings.threshold is not None:
            with _contained(f"the pytest plugin's {phase} start", "this phase was not watched"):
                from unstall._watch.watcher import watch

                self.watcher = watch(threshold=self.settings.threshold, log=False)

    def end_phase(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is None:
            return
        with _contained(f"the pytest plugin's {self.phase} end", "stalls of this phase were lost"):
            watcher.stop()
            threshold = watcher.threshold
            stalls = [s for s in _distinct(watcher.stalls) if s.duration_s >= threshold]
            for stall in stalls:
                self.problems.append(
                    _Problem(self.phase, _stall_text(stall, self.phase, threshold))
                )
            if self.collected is not None:
                self.collected.add(watcher.report(), stalls)

    def take(self, phases: tuple[str, ...]) -> list[_Problem]:
        taken = [p for p in self.problems if p.phase in phases]
        self.problems = [p for p in self.problems if p.phase not in phases]
        return taken


_PACKAGE_DIR = str(Path(__file__).parent)


@contextlib.contextmanager
def _contained(where: str, lost: str) -> Iterator[None]:
    """unstall's own failure stays here: logged and noted, and the test goes on."""
    try:
        yield
    except pytest.UsageError:
        raise
    except Exception as exc:
        from unstall._report.incidents import contain

        contain(where, lost, exc)


def _notes(since: float) -> list[str]:
    try:
        from unstall._report.incidents import notes_since

        return notes_since(since)
    except Exception:
        return []


def _distinct(stalls: list[Stall]) -> list[Stall]:
    """One stall per blocked period of a thread, preferring a culprit outside unstall.

    Two records may describe one period (the stall, and the loop stopping right after it
    with unstall's loop hook on the stack); the test needs to see it once, at its cause.
    """

    def in_unstall(stall: Stall) -> bool:
        return stall.culprit is None or stall.culprit.file.startswith(_PACKAGE_DIR)

    kept: list[Stall] = []
    for stall in sorted(stalls, key=lambda s: (in_unstall(s), s.start_s)):
        end = stall.start_s + stall.duration_s
        if not any(
            k.thread_id == stall.thread_id
            and stall.start_s < k.start_s + k.duration_s
            and k.start_s < end
            for k in kept
        ):
            kept.append(stall)
    return sorted(kept, key=lambda s: s.start_s)


@dataclass(slots=True)
class _Collected:
    """The stalls that failed tests, gathered for the ``--unstall-json/html/trace`` files.

    Each watcher's times are moved onto one clock (seconds after the session started).
    A suite starts a loop per test: the loops of one thread share one lane.
    """

    threshold: float
    outputs: list[tuple[Writer, str]]
    started_at: float = field(default_factory=time.time)
    stalls: list[Stall] = field(default_factory=list)
    lanes: dict[int, LoopInfo] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    def add(self, report: Report, stalls: list[Stall]) -> None:
        from unstall._report.records import LoopInfo

        offset = report.started_at - self.started_at
        for loop in report.loops:
            lane = self.lanes.setdefault(
                loop.thread_id, LoopInfo(loop.id, loop.thread, loop.thread_id, loop.kind)
            )
            lane.lag += [(t + offset, lag) for t, lag in loop.lag]
        for stall in stalls:
            shared = self.lanes.get(stall.thread_id)
            lane_id = stall.loop if shared is None else shared.id
            self.stalls.append(stall.with_updates(start_s=stall.start_s + offset, loop=lane_id))

    def report(self, argv: list[str]) -> Report:
        from unstall._report.records import Report

        return Report(
            self.threshold,
            stalls=sorted(self.stalls, key=lambda s: s.start_s),
            loops=list(self.lanes.values()),
            started_at=self.started_at,
            duration_s=time.time() - self.started_at,
            argv=argv,
        )


_GUARD = pytest.StashKey[_Guard]()
_DEFAULTS = pytest.StashKey[_Defaults]()
_COLLECTED = pytest.StashKey[_Collected]()
_SINCE = pytest.StashKey[float]()


# --- options -----------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("unstall", "unstall: fail tests that stall or block the event loop")
    group.addoption(
        "--unstall",
        nargs="?",
        const="",
        default=None,
        metavar="THRESHOLD",
        help="fail a test whose event loop stalls longer than THRESHOLD seconds "
        "(default: ini unstall_threshold, [tool.unstall] threshold, else 0.1); "
        "write a value as --unstall=0.05",
    )
    group.addoption(
        "--unstall-strict",
        action="store_true",
        default=None,
        help="strict mode for every test: a blocking call on an event loop fails the test",
    )
    from unstall._report.writers import WRITERS

    for writer in WRITERS.values():
        group.addoption(
            f"--unstall-{writer.name}",
            metavar="FILE",
            default=None,
            help="watch every test, as --unstall, and after the run write the stalls "
            f"that failed tests to FILE ({writer.describes})",
        )
    parser.addini("unstall_watch", "watch every test's event loops, as --unstall", type="bool")
    parser.addini("unstall_threshold", "default stall threshold in seconds", default="")
    parser.addini("unstall_strict", "strict mode for every test, as --unstall-strict", type="bool")


def _parse_threshold(value: object, source: str) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise pytest.UsageError(f"{source} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise pytest.UsageError(f"{source} must be > 0 seconds, got {value!r}")
    return seconds


def _default_threshold(config: pytest.Config) -> float:
    ini = str(config.getini("unstall_threshold")).strip()
    if ini:
        return _parse_threshold(ini, "ini option unstall_threshold")
    from unstall._strict.config import ConfigError, project_config

    try:
        configured = project_config().threshold
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    return configured if configured is not None else _DEFAULT_THRESHOLD


def _cli_threshold(config: pytest.Config, raw: str) -> float | None:
    """``--unstall VALUE``; a VALUE that is a test path was meant as one: hand it back."""
    try:
        float(raw)
    except ValueError:
        if not Path(raw.split("::")[0]).exists():
            raise pytest.UsageError(
                f"--unstall takes an optional threshold in seconds, written --unstall=0.05; "
                f"got {raw!r}, which is neither a number nor an existing test path"
            ) from None
    else:
        return _parse_threshold(raw, "--unstall")
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.insert(0, raw)
    else:
        config.args[:] = [raw]
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "unstall(threshold=None, strict=None): fail this test if its event loop stalls "
        "longer than threshold seconds; strict=True also fails it at a blocking call",
    )
    config.addinivalue_line(
        "markers",
        "unstall_allow(*entries): let this test block its event loop; with entries "
        "(call names, modules, functions, file globs) strict mode allows only those",
    )
    raw = config.getoption("unstall")
    outputs = _outputs(config)
    watch = raw is not None or bool(config.getini("unstall_watch")) or bool(outputs)
    threshold = _cli_threshold(config, raw) if raw else None
    strict = bool(config.getoption("unstall_strict") or config.getini("unstall_strict"))
    if threshold is None and (watch or strict or raw is not None):
        threshold = _default_threshold(config)
    defaults = _Defaults(watch, threshold or _DEFAULT_THRESHOLD, strict)
    config.stash[_DEFAULTS] = defaults
    if outputs:
        config.stash[_COLLECTED] = _Collected(defaults.threshold, outputs)
    if watch or strict:
        config.stash[_SINCE] = time.monotonic()


def _outputs(config: pytest.Config) -> list[tuple[Writer, str]]:
    """The report files asked for (``--unstall-json FILE``...), each checked writable."""
    from unstall._report.writers import WRITERS

    outputs = []
    for writer in WRITERS.values():
        path = config.getoption(f"unstall_{writer.name}")
        if path is None:
            continue
        option = f"--unstall-{writer.name}"
        parent = os.path.dirname(os.path.abspath(path))
        if not path or os.path.isdir(path):
            raise pytest.UsageError(f"{option} needs a file name, got {path!r}")
        if not os.path.isdir(parent):
            raise pytest.UsageError(f"{option} {path!r}: directory {parent!r} does not exist")
        writer.load()
        outputs.append((writer, str(path)))
    return outputs


def pytest_sessionfinish(session: pytest.Session) -> None:
    collected = session.config.stash.get(_COLLECTED, None)
    if collected is None:
        return
    report = collected.report(["pytest", *session.config.invocation_params.args])
    for writer, path in collected.outputs:
        try:
            writer.write(report, path)
        except OSError as exc:
            collected.messages.append(f"unstall: cannot write {path!r}: {exc.strerror or exc}")
        except Exception as exc:  # unstall's own failure: the run's outcome stays the suite's
            from unstall._report.incidents import contain

            contain(f"the pytest plugin's {writer.name} writer", f"{path!r} was not written", exc)
        else:
            stalls = f"{len(report.stalls)} stall{'' if len(report.stalls) == 1 else 's'}"
            collected.messages.append(f"unstall: wrote {writer.name} ({stalls}) to {path}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    collected = terminalreporter.config.stash.get(_COLLECTED, None)
    for message in collected.messages if collected is not None else ():
        terminalreporter.write_line(message)
    since = terminalreporter.config.stash.get(_SINCE, None)
    notes = _notes(since) if since is not None else []
    if notes:  # what unstall failed to watch, through its own errors
        terminalreporter.write_sep("-", "unstall: notes")
        for note in notes:
            terminalreporter.write_line(f"unstall: note: {note}")


# --- per test ----------------------------------------------------------------------------


def _settings(item: pytest.Item) -> _Settings | None:
    defaults = item.config.stash.get(_DEFAULTS, None)
    if defaults is None:
        return None
    marker = item.get_closest_marker("unstall")
    allow = item.get_closest_marker("unstall_allow")
    if allow is not None and not allow.args:
        return None
    watch, threshold, strict = defaults.watch, defaults.threshold, defaults.strict
    if marker is not None:
        unknown = set(marker.kwargs) - {"threshold", "strict"}
        if unknown or marker.args:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.unstall takes threshold= and strict= only, "
                f"got {', '.join(sorted(unknown)) or repr(marker.args)}"
            )
        # A bare marker, or one naming a threshold, turns watching on for this test.
        watch = watch or "threshold" in marker.kwargs or not marker.kwargs
        value = marker.kwargs.get("threshold")
        if value is not None:
            threshold = _parse_threshold(value, f"{item.nodeid}: unstall(threshold=...)")
        strict = bool(marker.kwargs.get("strict", strict))
    if not (watch or strict):
        return None
    entries = tuple(str(a) for a in allow.args) if allow is not None else ()
    return _Settings(threshold if watch else None, strict, entries)


def _start(item: pytest.Item) -> _Guard | None:
    settings = _settings(item)
    if settings is None:
        return None
    guard = _Guard(settings, item.config.stash.get(_COLLECTED, None))
    if settings.strict:
        with _contained("the pytest plugin's strict start", "strict mode was off for this test"):
            from unstall._strict.api import strict

            try:
                policy = strict(action="raise", allow=settings.allow, _sink=guard.on_blocking)
            except (TypeError, ValueError) as exc:
                raise pytest.UsageError(f"{item.nodeid}: unstall strict mode: {exc}") from None
            guard.uninstall = policy.install()
    item.stash[_GUARD] = guard
    return guard


@contextlib.contextmanager
def _phase(guard: _Guard | None, name: str) -> Iterator[None]:
    """Watch one phase (setup, call, teardown) of a guarded test."""
    if guard is None:
        yield
        return
    guard.start_phase(name)
    try:
        yield
    finally:
        guard.end_phase()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    guard = None
    with _contained("the pytest plugin's setup", "this test was not watched"):
        guard = _start(item)
    with _phase(guard, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    with _phase(item.stash.get(_GUARD, None), "call"):
        return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    guard = item.stash.get(_GUARD, None)
    try:
        with _phase(guard, "teardown"):
            return (yield)
    finally:
        if guard is not None and guard.uninstall is not None:
            with _contained("the pytest plugin's strict stop", "strict mode may stay on"):
                guard.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    guard = item.stash.get(_GUARD, None)
    if guard is None:
        return report
    with _contained("the pytest plugin's report", "a stall of this test may be unreported"):
        _judge(guard, call, report)
    return report


def _judge(guard: _Guard, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    if call.when == "setup" and report.passed:
        return  # setup problems are reported with the test's call
    # Teardown also takes what an interrupted run left (setup problems with no call).
    phases = ("setup", "call") if call.when != "teardown" else ("setup", "call", "teardown")
    raised = call.excinfo.value if call.excinfo is not None else None
    problems = [p for p in guard.take(phases) if p.error is None or p.error is not raised]
    if problems:
        _attach(report, problems)
    if call.when == "teardown":
        notes = _notes(guard.started)
        if notes:  # what unstall failed to watch in this test; the test's outcome is its own
            report.sections.append(("unstall", "\n".join(notes)))


def _attach(report: pytest.TestReport, problems: list[_Problem]) -> None:
    text = "\n\n".join(p.text for p in problems)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = text
    else:
        report.sections.append(("unstall", text))


# --- failure texts -----------------------------------------------------------------------


def _stall_text(stall: Stall, phase: str, threshold: float) -> str:
    from unstall._report.format import format_duration

    where = "?"
    if stall.culprit is not None:
        where = stall.culprit.location
        if stall.culprit.code:
            where += f": {stall.culprit.code}"
    lines = [
        f"unstall: the event loop stalled for {format_duration(stall.duration_s)} during {phase} "
        f"(threshold {format_duration(threshold)})",
        f"  culprit: {where}",
    ]
    if stall.call:
        lines.append(f"  call: {stall.call}")
    if stall.task or stall.coro:
        lines.append(f"  task: {stall.task} ({stall.coro})")
    route = stall.context.get("http.route")
    if route:
        lines.append(f"  request: {stall.context.get('http.method', '')} {route}".rstrip())
    if stall.context.get("trace_id"):
        lines.append(f"  trace: {stall.context['trace_id']}")
    lines.append(f"  fix: {stall.fix_hint}")
    if stall.stack:
        lines.append("  stack (most recent call last):")
        for frame in stall.stack[-_STACK_LINES:]:
            lines.append(f"    {frame.location} in {frame.function}")
            if frame.code:
                lines.append(f"      {frame.code}")
    return "\n".join(lines)


def _strict_text(error: BlockingCallError, phase: str) -> str:
    return f"unstall strict mode, during {phase}: {error}"
