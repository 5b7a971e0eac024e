"""The suite's record: every stall and blocking call across the run, for the end summary,
the ``--unstall-json/html/trace`` files and the baseline."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from unstall._plugin.baseline import Baseline, Finding
from unstall._report.records import LoopInfo, Report, Stall

if TYPE_CHECKING:
    from unstall._exceptions import BlockingCallError
    from unstall._report.writers import Writer

_MAX_LAG_POINTS = 200_000  # the timeline downsamples anyway; this bounds memory
_MAX_PLACES = 12
_TEST_DIRS = frozenset({"tests", "test", "testing"})


@dataclass(frozen=True, slots=True)
class Hit:
    """One strict report in one test, as plain data (it travels from an xdist worker)."""

    call: str
    where: str
    kind: str
    origin: str  # "project", "test code", "dependency" or "stdlib"
    rule: str  # "fail" (failed the test), "warn" (cheap, within the budget), "baseline"
    took_s: float | None = None  # cheap calls are timed; others stop before they run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Hit:
        took = data.get("took_s")
        return cls(
            str(data["call"]),
            str(data["where"]),
            str(data["kind"]),
            str(data["origin"]),
            str(data["rule"]),
            None if took is None else float(took),
        )


@dataclass(slots=True)
class CallSite:
    """One strict-mode call site across the suite: one finding, however many tests hit it."""

    call: str
    where: str
    kind: str
    origin: str
    tests: set[str] = field(default_factory=set)  # every test that reached it
    failed: set[str] = field(default_factory=set)  # the tests it failed
    rules: set[str] = field(default_factory=set)
    worst_s: float | None = None  # the longest timed call

    def add(self, test: str, hit: Hit) -> None:
        self.tests.add(test)
        self.rules.add(hit.rule)
        if hit.rule == "fail":
            self.failed.add(test)
        if hit.took_s is not None and (self.worst_s is None or hit.took_s > self.worst_s):
            self.worst_s = hit.took_s

    @property
    def rule(self) -> str:
        """The gravest rule that applied here: fail, then baseline, then warn."""
        return next(r for r in ("fail", "baseline", "warn") if r in self.rules)


def origin_of(file: str, root: Path, test_globs: tuple[str, ...]) -> str:
    """Whose code a culprit file is: the project's, its tests', a dependency's or stdlib's."""
    from unstall._strict.allow import is_installed, is_stdlib

    if is_stdlib(file):
        return "stdlib"
    if is_installed(file) or file.startswith("<"):
        return "dependency"
    path = PurePath(file)
    try:
        parts = path.relative_to(root).parts[:-1]
    except ValueError:
        parts = path.parts[:-1]
    named_test = any(fnmatch.fnmatch(path.name, g) for g in (*test_globs, "conftest.py"))
    return "test code" if named_test or _TEST_DIRS & set(parts) else "project"


class SuiteLog:
    """Collects what every watched test found; one per run (the :class:`Ledger`)."""

    def __init__(
        self,
        root: Path,
        threshold: float,
        baseline: Baseline | None,
        test_globs: tuple[str, ...] = ("test_*.py", "*_test.py"),
    ) -> None:
        self.root = root
        self.threshold = threshold
        self.baseline = baseline
        self.test_globs = test_globs
        self.started_at = time.time()
        self.stalls: list[Stall] = []
        self.findings: list[Finding] = []  # every stall and blocking call, known or not
        self.sites: dict[tuple[str, str], CallSite] = {}
        self.lanes: dict[str, LoopInfo] = {}
        self.trio_skipped = 0
        self._lag_points = 0

    def known(self, found: Finding) -> bool:
        self.findings.append(found)
        return self.baseline is not None and self.baseline.known(found)

    def hit(self, found: Finding, error: BlockingCallError, rule: str) -> Hit:
        """A strict report as a :class:`Hit`, its origin judged from the culprit's file."""
        origin = origin_of(error.file, self.root, self.test_globs)
        return Hit(found.call, found.where, error.kind, origin, rule, error.took_s)

    def add_hit(self, test: str, hit: Hit) -> None:
        """Count a strict report of ``test`` at its call site."""
        site = self.sites.get((hit.where, hit.call))
        if site is None:
            site = self.sites[hit.where, hit.call] = CallSite(
                hit.call, hit.where, hit.kind, hit.origin
            )
        site.add(test, hit)

    def record_stalls(self, test: str, report: Report) -> None:
        """Keep a test phase's stalls and loop lag, on the suite's clock, one lane a thread."""
        offset = report.started_at - self.started_at
        for loop in report.loops:
            lane = self._lane(loop.thread, loop.thread_id)
            room = _MAX_LAG_POINTS - self._lag_points
            if room > 0:
                lane.lag += [(t + offset, lag) for t, lag in loop.lag[:room]]
                self._lag_points += min(room, len(loop.lag))
        for stall in report.stalls:
            lane = self._lane(stall.thread, stall.thread_id)
            callback = stall.callback or f"test {test}"
            self.stalls.append(
                stall.with_updates(start_s=stall.start_s + offset, loop=lane.id, callback=callback)
            )

    def add_stall(self, stall: Stall, origin: float) -> None:
        """A stall timed from wall-clock ``origin`` (an xdist worker's), on the suite's clock."""
        lane = self._lane(stall.thread, stall.thread_id)
        start = stall.start_s + origin - self.started_at
        self.stalls.append(stall.with_updates(start_s=start, loop=lane.id))

    def _lane(self, thread: str, thread_id: int) -> LoopInfo:
        lane = self.lanes.get(thread)
        if lane is None:
            lane = self.lanes[thread] = LoopInfo(f"loops on {thread}", thread, thread_id)
        return lane

    def report(self) -> Report:
        """The suite as one report: its stalls and its loops' lag, one lane per thread."""
        return Report(
            threshold_s=self.threshold,
            stalls=sorted(self.stalls, key=lambda s: s.start_s),
            loops=list(self.lanes.values()),
            started_at=self.started_at,
            duration_s=time.time() - self.started_at,
        )

    def write_outputs(self, outputs: tuple[tuple[Writer, str], ...], argv: list[str]) -> list[str]:
        """Write the suite's report with each writer; one message per file."""
        report = self.report()
        report.argv = argv
        messages = []
        for writer, path in outputs:
            try:
                writer.write(report, path)
            except OSError as exc:
                messages.append(f"unstall: cannot write {path!r}: {exc.strerror or exc}")
            else:
                stalls = f"{len(report.stalls)} stall{'' if len(report.stalls) == 1 else 's'}"
                messages.append(f"unstall: wrote {writer.name} ({stalls}) to {path}")
        return messages

    def summary_lines(self, *, color: bool, width: int, verbose: bool = False) -> list[str]:
        """The end-of-run summary, grouped by culprit line like ``unstall run``'s."""
        lines: list[str] = []
        if self.trio_skipped:
            tests = "test" if self.trio_skipped == 1 else "tests"
            lines.append(
                f"unstall: {self.trio_skipped} {tests} on the trio backend not watched "
                "(unstall watches asyncio event loops)"
            )
        if self.stalls:
            from unstall._report.summary import render_summary

            text = render_summary(self.report(), color=color, width=width, cwd=str(self.root))
            lines += text.splitlines()
        lines += self._blocking_lines(verbose)
        lines += self._baseline_lines()
        return lines

    def _blocking_lines(self, verbose: bool) -> list[str]:
        if not self.sites:
            return []
        order = {"fail": 0, "baseline": 1, "warn": 2}
        sites = sorted(
            self.sites.values(),
            key=lambda c: (order[c.rule], -len(c.failed), -len(c.tests), c.where),
        )
        failing = [c for c in sites if c.rule == "fail"]
        tests = len(set().union(*(c.tests for c in sites)))
        lines = [
            "",
            f"unstall strict mode: {_plural(len(sites), 'call site')} in "
            f"{_plural(tests, 'test')}; {len(failing)} of them failed tests",
            "",
            "  tests  failed  worst     kind        origin      rule      call  where",
        ]
        # Every failing site is listed: each is something to fix or allow.
        room = len(sites) if verbose else max(0, _MAX_PLACES - len(failing))
        shown = failing + [c for c in sites if c.rule != "fail"][:room]
        for c in shown:
            lines.append(
                f"  {len(c.tests):>4}x  {len(c.failed) or '-':>6}  {_short_duration(c.worst_s):<8}  "
                f"{c.kind:<10}  {c.origin:<10}  {c.rule:<8}  {c.call}  {c.where}"
            )
        if len(sites) > len(shown):
            more = len(sites) - len(shown)
            lines.append(f"  ... and {more} more call sites that failed no test (-v lists them)")
        lines.append(
            "  (fail: a costly call, or a cheap one over the budget; warn: cheap and within the "
            "budget, fails no test; baseline: listed in the baseline file)"
        )
        return lines

    def _baseline_lines(self) -> list[str]:
        baseline = self.baseline
        if baseline is None:
            return []
        if baseline.writing:
            count = len({f.key for f in baseline.seen})
            return ["", f"unstall: wrote {count} findings to the new baseline {baseline.path}"]
        stale = baseline.stale()
        if not stale:
            return []
        entries = "entry is" if len(stale) == 1 else "entries are"
        lines = ["", f"{len(stale)} baseline {entries} fixed: remove them from {baseline.path}"]
        lines += [f"  {f.test}  {f.kind} {f.call or '?'} at {f.where}" for f in stale]
        return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _short_duration(seconds: float | None) -> str:
    """A strict call's time: microseconds and milliseconds are its scale."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 0.1:
        return f"{seconds * 1e3:.1f} ms"
    from unstall._report.format import format_duration

    return format_duration(seconds)
