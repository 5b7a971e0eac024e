"""The suite's record: every stall and blocking call across the run, for the end summary,
the ``--unstall-json/html/trace`` files and the baseline."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from unstall._plugin.baseline import Baseline, Finding
from unstall._report.records import LoopInfo, Report, Stall

if TYPE_CHECKING:
    from unstall._report.writers import Writer

_MAX_LAG_POINTS = 200_000  # the timeline downsamples anyway; this bounds memory
_MAX_PLACES = 12


class SuiteLog:
    """Collects what every watched test found; one per run (the :class:`Ledger`)."""

    def __init__(self, root: Path, threshold: float, baseline: Baseline | None) -> None:
        self.root = root
        self.threshold = threshold
        self.baseline = baseline
        self.started_at = time.time()
        self.stalls: list[Stall] = []
        self.blocking: list[Finding] = []
        self.findings: list[Finding] = []  # every stall and blocking call, known or not
        self.lanes: dict[str, LoopInfo] = {}
        self.trio_skipped = 0
        self._lag_points = 0

    def known(self, found: Finding) -> bool:
        self.findings.append(found)
        if found.kind == "blocking":
            self.blocking.append(found)
        return self.baseline is not None and self.baseline.known(found)

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

    def summary_lines(self, *, color: bool, width: int) -> list[str]:
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
        lines += self._blocking_lines()
        lines += self._baseline_lines()
        return lines

    def _blocking_lines(self) -> list[str]:
        if not self.blocking:
            return []
        places = Counter((f.where, f.call) for f in self.blocking)
        lines = [
            "",
            f"unstall strict mode: {len(self.blocking)} blocking "
            f"call{'s' if len(self.blocking) != 1 else ''} at {len(places)} "
            f"place{'s' if len(places) != 1 else ''}",
            "",
            "  count  call  where",
        ]
        for (where, call), count in places.most_common(_MAX_PLACES):
            lines.append(f"  {count:>4}x  {call}  {where}")
        if len(places) > _MAX_PLACES:
            lines.append(f"  ... and {len(places) - _MAX_PLACES} more places")
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
