"""What one test is watched with, the problems found in it, and their failure texts."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from unstall._plugin.baseline import Finding, finding
from unstall._plugin.containment import contained
from unstall._plugin.markers import Settings

if TYPE_CHECKING:
    from unstall._exceptions import BlockingCallError
    from unstall._plugin.summary import Hit
    from unstall._report.records import Report, Stall
    from unstall._watch.watcher import Watcher

_STACK_LINES = 12
_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


class Ledger(Protocol):
    """Where a guard reports what it found: the suite summary and the baseline."""

    root: Path

    def known(self, found: Finding) -> bool: ...

    def hit(self, found: Finding, error: BlockingCallError, rule: str) -> Hit: ...

    def add_hit(self, test: str, hit: Hit) -> None: ...

    def record_stalls(self, test: str, report: Report) -> None: ...


@dataclass(slots=True)
class Problem:
    phase: str
    text: str
    error: BaseException | None = None


@dataclass(slots=True)
class Guard:
    """What one test is watched with, and the problems found so far, by phase."""

    test: str
    settings: Settings
    ledger: Ledger
    phase: str = "setup"
    watcher: Watcher | None = None
    uninstall: object = None
    problems: list[Problem] = field(default_factory=list)
    hits: dict[tuple[str, str], Hit] = field(default_factory=dict)  # strict reports, by site
    started: float = field(default_factory=time.monotonic)

    def on_blocking(self, error: BlockingCallError) -> bool | None:
        """Strict mode's sink: ``False`` lets a known (baselined) call go ahead."""
        found = self._finding(error)
        if self.ledger.known(found):
            self._add_hit(self.ledger.hit(found, error, "baseline"))
            return False
        self._add_hit(self.ledger.hit(found, error, "fail"))
        self.problems.append(Problem(self.phase, strict_text(error, self.phase), error))
        return None

    def on_cheap_call(self, error: BlockingCallError) -> bool:
        """Strict mode's notice of a cheap call within the budget: a line of the summary.

        No Python warning: a suite run with ``-W error`` (``filterwarnings = error``) would
        fail the test on it, and a cheap call fails no test.
        """
        self._add_hit(self.ledger.hit(self._finding(error), error, "warn"))
        return False

    def _add_hit(self, hit: Hit) -> None:
        self.hits[hit.where, hit.call] = hit  # sent on from an xdist worker
        self.ledger.add_hit(self.test, hit)

    def _finding(self, error: BlockingCallError) -> Finding:
        code = error.stack[-1].code if error.stack else None
        for frame in error.stack:
            if frame.file == error.file and frame.line == error.line:
                code = frame.code
        return finding(
            self.test, "blocking", error.file, error.line, code, error.call, self.ledger.root
        )

    def start_phase(self, phase: str) -> None:
        self.phase = phase
        if self.settings.threshold is not None:
            with contained(f"the pytest plugin's {phase} start", "this phase was not watched"):
                from unstall._watch.watcher import watch

                self.watcher = watch(threshold=self.settings.threshold, log=False)

    def end_phase(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is None:
            return
        with contained(f"the pytest plugin's {self.phase} end", "stalls of this phase were lost"):
            self._collect(watcher)

    def _collect(self, watcher: Watcher) -> None:
        watcher.stop()
        threshold = watcher.threshold
        stalls = [
            s
            for s in distinct(watcher.stalls)
            if s.duration_s >= threshold and not stall_allowed(s, self.settings.allow)
        ]
        report = watcher.report()
        report.stalls = stalls
        self.ledger.record_stalls(self.test, report)
        for stall in stalls:
            culprit = stall.culprit
            found = finding(
                self.test,
                "stall",
                culprit.file if culprit else None,
                culprit.line if culprit else 0,
                culprit.code if culprit else None,
                stall.call,
                self.ledger.root,
            )
            if not self.ledger.known(found):
                self.problems.append(Problem(self.phase, stall_text(stall, self.phase, threshold)))

    def take(self, phases: tuple[str, ...]) -> list[Problem]:
        taken = [p for p in self.problems if p.phase in phases]
        self.problems = [p for p in self.problems if p.phase not in phases]
        return taken


def distinct(stalls: list[Stall]) -> list[Stall]:
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


def _modules_by_file() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            found[file] = name
    return found


def stall_allowed(stall: Stall, entries: tuple[str, ...]) -> bool:
    """Whether a marker's ``allow=`` entries cover a stall: its call or a frame of its stack."""
    if not entries:
        return False
    from unstall._strict.allow import AllowList

    allow = AllowList.compile(entries)
    if stall.call and allow.allows_call(stall.call):
        return True
    modules = _modules_by_file()
    return any(
        allow.allows_location(modules.get(f.file, ""), f.function, f.file) for f in stall.stack
    )


def stall_text(stall: Stall, phase: str, threshold: float) -> str:
    where = "?"
    if stall.culprit is not None:
        where = stall.culprit.location
        if stall.culprit.code:
            where += f": {stall.culprit.code}"
    from unstall._report.format import format_duration

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


def strict_text(error: BlockingCallError, phase: str) -> str:
    return f"unstall strict mode, during {phase}: {error}"
