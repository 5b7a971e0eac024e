"""The hooks that watch tests, registered only when some test is watched.

An idle plugin registers none of them: it wraps no hook, so it appears in no traceback
and no warning's location of a run that did not ask for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager

import pytest

from unstall._plugin.baseline import Baseline, BaselineError, from_dict
from unstall._plugin.containment import contained, notes_since
from unstall._plugin.guard import Guard, Problem
from unstall._plugin.markers import on_trio, settings_for
from unstall._plugin.options import Defaults
from unstall._plugin.summary import Hit, SuiteLog
from unstall._plugin.tracebacks import strip_own_frames
from unstall._plugin.unittest_loop import normal_mode_loop

GUARD = pytest.StashKey[Guard]()
FIRST_STALL = pytest.StashKey[int]()
FIRST_FINDING = pytest.StashKey[int]()
FINDINGS = "unstall"  # a test's stalls, sent by an xdist worker
BASELINE_FINDINGS = "unstall-findings"  # a test's findings, for the controller's baseline
STRICT_FINDINGS = "unstall-strict"  # a test's strict reports, for the summary
NAME = "unstall-session"


class Session:
    """The watching half of the plugin, for one pytest run."""

    def __init__(self, config: pytest.Config, defaults: Defaults) -> None:
        self.config = config
        self.defaults = defaults
        self.since = time.monotonic()
        baseline = None
        if defaults.baseline is not None:
            try:
                baseline = Baseline.load(defaults.baseline)
            except BaselineError as exc:
                raise pytest.UsageError(str(exc)) from None
        test_globs = tuple(str(g) for g in config.getini("python_files"))
        self.log = SuiteLog(config.rootpath, defaults.threshold, baseline, test_globs)
        self.messages: list[str] = []

    def _start(self, item: pytest.Item) -> Guard | None:
        __tracebackhide__ = True
        settings = settings_for(item, self.defaults)
        if settings is None:
            return None
        if on_trio(item):
            self.log.trio_skipped += 1
            return None
        if self.log.baseline is not None:
            self.log.baseline.tests_run.add(item.nodeid)
        guard = Guard(item.nodeid, settings, self.log)
        if settings.strict:
            with contained("the pytest plugin's strict start", "strict mode was off for this test"):
                from unstall._strict.api import strict

                try:
                    mode = self.defaults.mode
                    policy = strict(
                        action="raise",
                        allow=settings.allow,
                        level=mode.level,  # type: ignore[arg-type]
                        budget=mode.budget,
                        only=mode.only,  # type: ignore[arg-type]
                        _sink=guard.on_blocking,
                        _notice=guard.on_cheap_call,
                    )
                except (TypeError, ValueError) as exc:
                    raise pytest.UsageError(f"{item.nodeid}: unstall strict mode: {exc}") from None
                guard.uninstall = policy.install()
        item.stash[GUARD] = guard
        item.stash[FIRST_STALL] = len(self.log.stalls)
        item.stash[FIRST_FINDING] = len(self.log.findings)
        return guard

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        guard = None
        with contained("the pytest plugin's setup", "this test was not watched"):
            guard = self._start(item)
        with _phase(guard, "setup"):
            return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        guard = item.stash.get(GUARD, None)
        if guard is not None:
            normal_mode_loop(getattr(item, "instance", None))
        with _phase(guard, "call"):
            return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True
        guard = item.stash.get(GUARD, None)
        try:
            with _phase(guard, "teardown"):
                return (yield)
        finally:
            if guard is not None and callable(guard.uninstall):
                with contained("the pytest plugin's strict stop", "strict mode may stay on"):
                    guard.uninstall()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        guard = item.stash.get(GUARD, None)
        if guard is not None and call.excinfo is not None:
            with contained("the pytest plugin's traceback cleanup", "unstall's frames may show"):
                strip_own_frames(call.excinfo.value)
        report = yield
        if guard is not None:
            with contained("the pytest plugin's report", "a stall of this test may be unreported"):
                _judge(guard, call, report)
                if call.when == "teardown" and self._on_worker:
                    self._send_to_controller(item, report)
        return report

    def _send_to_controller(self, item: pytest.Item, report: pytest.TestReport) -> None:
        """Under pytest-xdist: the test's stalls and findings travel with its last report.

        The findings (stalls and blocking calls, known or not) are for the controller's
        baseline; with a baseline they are sent even when there are none, so that the
        controller knows the test ran (a fixed entry is stale). The strict reports by call
        site (cheap calls too) are for its summary.
        """
        from unstall._report.findings import worker_findings

        stalls = self.log.stalls[item.stash.get(FIRST_STALL, len(self.log.stalls)) :]
        if stalls:
            found = worker_findings((s, self.log.started_at) for s in stalls)
            report.user_properties.append((FINDINGS, found))
        findings = self.log.findings[item.stash.get(FIRST_FINDING, len(self.log.findings)) :]
        if findings or self.log.baseline is not None:
            sent = [dataclasses.asdict(f) for f in findings]
            report.user_properties.append((BASELINE_FINDINGS, sent))
        guard = item.stash[GUARD]
        if guard.hits:
            hits = [hit.to_dict() for hit in guard.hits.values()]
            report.user_properties.append((STRICT_FINDINGS, hits))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On xdist's controller: a worker's stalls join the summary and the output files."""
        if getattr(report, "node", None) is None:
            return  # a report of this process: its stalls are recorded already
        from unstall._report.findings import read_findings

        for name, value in report.user_properties:
            if name == FINDINGS:
                for stall, origin in read_findings(value):
                    self.log.add_stall(stall, origin)
            elif name == BASELINE_FINDINGS:
                self._add_worker_findings(report.nodeid, value)
            elif name == STRICT_FINDINGS and isinstance(value, list):
                for data in value:
                    with contextlib.suppress(AttributeError, KeyError, TypeError, ValueError):
                        self.log.add_hit(report.nodeid, Hit.from_dict(data))

    def _add_worker_findings(self, test: str, value: object) -> None:
        """A worker's findings for one test: the controller's baseline is the run's."""
        if self.log.baseline is not None:
            self.log.baseline.tests_run.add(test)
        for data in value if isinstance(value, list) else ():
            try:
                found = from_dict(data)
            except ValueError:
                continue  # not from this version of unstall: nothing to record
            self.log.known(found)  # the worker judged its test; this only records it

    @property
    def _on_worker(self) -> bool:
        """An xdist worker: the controller writes the baseline and the report files."""
        return hasattr(self.config, "workerinput")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        baseline = self.log.baseline
        interrupted = exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR)
        if baseline is not None and baseline.writing and not interrupted and not self._on_worker:
            with contained("the pytest plugin's baseline", f"{baseline.path} was not written"):
                baseline.save()
        if self.defaults.outputs and not self._on_worker:
            argv = ["pytest", *self.config.invocation_params.args]
            with contained("the pytest plugin's report files", "a report file was not written"):
                self.messages += self.log.write_outputs(self.defaults.outputs, argv)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        lines = self.log.summary_lines(
            color=terminalreporter.hasmarkup,
            width=terminalreporter._tw.fullwidth,
            verbose=terminalreporter.verbosity > 0,
        )
        lines += self.messages
        if lines:
            terminalreporter.write_sep("=", "unstall summary")
            for line in lines:
                terminalreporter.write_line(line)
        notes = notes_since(self.since)
        if notes:
            terminalreporter.write_sep("-", "unstall: notes")
            for note in notes:
                terminalreporter.write_line(f"unstall: note: {note}")


@contextmanager
def _phase(guard: Guard | None, name: str) -> Iterator[None]:
    """Watch one phase (setup, call, teardown) of a guarded test."""
    __tracebackhide__ = True
    if guard is None:
        yield
        return
    guard.start_phase(name)
    try:
        yield
    finally:
        guard.end_phase()


def _judge(guard: Guard, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """Fail or annotate ``report`` with the problems found in its phases."""
    if call.when == "setup" and report.passed:
        return  # setup problems are reported with the test's call
    # Teardown also takes what an interrupted run left (setup problems with no call).
    phases = ("setup", "call") if call.when != "teardown" else ("setup", "call", "teardown")
    raised = call.excinfo.value if call.excinfo is not None else None
    problems = [p for p in guard.take(phases) if p.error is None or p.error is not raised]
    if problems:
        _attach(report, problems)
    if call.when == "teardown":
        notes = notes_since(guard.started)
        if notes:  # what unstall failed to watch in this test; the test's outcome is its own
            report.sections.append(("unstall", "\n".join(notes)))


def _attach(report: pytest.TestReport, problems: list[Problem]) -> None:
    text = "\n\n".join(p.text for p in problems)
    if report.passed:
        report.outcome = "failed"
        report.longrepr = text
    else:
        report.sections.append(("unstall", text))
