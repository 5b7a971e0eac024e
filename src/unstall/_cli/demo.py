"""``unstall demo``: watch one blocking call freeze an event loop, then see it fixed.

Two coroutines share a loop: ``test1`` calls ``slow_function``, which blocks in
``time.sleep`` for 3 s, and ``test2`` prints 0..9 every 0.5 s. The demo runs the blocking
version under the real ``unstall run`` (a subprocess), shows the stall as it is found and
the summary, then the one-line fix and the fixed version. The two scripts live in
``unstall/_cli/demo_scripts/`` as text, not modules of the package (``examples/`` links to
them); they are copied to a temporary
directory and run from there, so that from an installed wheel too they are the user's own
code to the watcher, not a library's.

The program's own lines go to stdout unchanged; the narration and unstall's report go to
stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

from unstall._exceptions import ReportError
from unstall._report.format import format_duration, short_path, should_color
from unstall._report.records import Report

__all__ = ["BLOCKING_SCRIPT", "FIXED_SCRIPT", "main"]

USAGE = "usage: unstall demo [--fast] [--no-color]"

NORMAL_TIMINGS = (3.0, 0.5)
# The fast run keeps the story but puts the end of the block halfway between two ticks,
# so the fixed version's order (5, "Finish test1", 6) holds on a loaded machine too.
FAST_TIMINGS = (0.6, 0.11)


def _script(name: str) -> str:
    return (resources.files("unstall._cli.demo_scripts") / name).read_text(encoding="utf-8")


BLOCKING_SCRIPT = _script("blocking_call.py.txt")
FIXED_SCRIPT = _script("fixed_call.py.txt")

_DIFF_OLD = "-    slow_function()"
_DIFF_NEW = "+    await unstall.to_thread(slow_function)"
_STYLES = {"head": "1", "dim": "2", "red": "31", "green": "32", "cmd": "36"}


@dataclass
class _Run:
    """What one watched run of a scenario script printed, and its report."""

    stdout: list[str]
    returncode: int
    report: Report | None


class _Narrator:
    def __init__(self, color: bool) -> None:
        self.color = color

    def paint(self, text: str, style: str) -> str:
        return f"\033[{_STYLES[style]}m{text}\033[0m" if self.color and text else text

    def say(self, text: str = "", style: str | None = None) -> None:
        sys.stderr.write((self.paint(text, style) if style else text) + "\n")
        sys.stderr.flush()


def _relay(source: IO[str], sink: IO[str], keep: list[str] | None) -> None:
    for line in source:
        sink.write(line)
        sink.flush()
        if keep is not None:
            keep.append(line.rstrip("\n"))


def _child_env(color: bool) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding this unstall
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.pop("NO_COLOR" if color else "FORCE_COLOR", None)
    env["FORCE_COLOR" if color else "NO_COLOR"] = "1"
    return env


def _run_watched(workdir: str, script: str, timings: tuple[float, float], color: bool) -> _Run:
    """Run ``script`` under ``python -m unstall run``, relaying its output line by line."""
    report_path = os.path.join(workdir, script.replace(".py", ".json"))
    args = [sys.executable, "-m", "unstall", "run", "--json", report_path, script]
    proc = subprocess.Popen(
        [*args, *(f"{t:g}" for t in timings)],
        cwd=workdir,
        env=_child_env(color),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    lines: list[str] = []
    relays = [
        threading.Thread(target=_relay, args=(proc.stdout, sys.stdout, lines), daemon=True),
        threading.Thread(target=_relay, args=(proc.stderr, sys.stderr, None), daemon=True),
    ]
    for relay in relays:
        relay.start()
    returncode = proc.wait()
    for relay in relays:
        relay.join()
    try:
        report: Report | None = Report.read(report_path)
    except ReportError:
        report = None
    return _Run(lines, returncode, report)


def _intro(say: _Narrator, timings: tuple[float, float]) -> None:
    block, tick = timings
    say.say("unstall demo: one blocking call freezes a whole event loop", "head")
    say.say()
    say.say("  Two coroutines share one asyncio loop:")
    say.say(f"    test1() calls slow_function(), which blocks in time.sleep({block:g})")
    say.say(f"    test2() prints 0 to 9, one number every {tick:g} s")
    say.say("  On a free loop the numbers would start at once. Watch what happens.")
    say.say()


def _step(say: _Narrator, number: int, title: str, script: str) -> None:
    say.say(f"[{number}/2] {title}", "head")
    say.say("      " + say.paint(f"$ unstall run {script}", "cmd"))


def _culprit_story(say: _Narrator, run: _Run, workdir: str) -> bool:
    """Explain what the report found; returns whether it named slow_function."""
    stalls = run.report.stalls if run.report else []
    worst = max(stalls, key=lambda s: s.duration_s, default=None)
    say.say()
    if worst is None or worst.culprit is None or worst.culprit.function != "slow_function":
        say.say("  Hmm: the watcher did not name slow_function this time (see above).", "red")
        return False
    where = f"{short_path(worst.culprit.file, workdir)}:{worst.culprit.line}"
    say.say(
        f"  Found it: slow_function() at {where} held the loop for "
        f"{format_duration(worst.duration_s)}, inside {worst.call or 'a blocking call'}."
    )
    if run.stdout[:2] == ["Finish test1", "0"]:
        say.say('  Nothing else could run meanwhile: test2 printed 0 only after "Finish test1".')
    return True


def _fix(say: _Narrator) -> None:
    say.say()
    say.say("  The fix, one line in test1() (fixed_call.py):")
    say.say(say.paint(_DIFF_OLD, "red"))
    say.say(say.paint(_DIFF_NEW, "green"))
    say.say()


def _closing(say: _Narrator, run: _Run) -> bool:
    say.say()
    stalls = run.report.stalls if run.report else []
    ours = [s for s in stalls if s.culprit and s.culprit.function == "slow_function"]
    if run.returncode != 0 or run.report is None or ours:
        say.say("  The fixed run did not come out clean this time; see the report above.", "red")
        return False
    say.say("  The loop stayed free: test2 kept ticking while slow_function() slept in a thread.")
    if stalls:  # a pause with none of the program's code running: the machine was busy
        say.say("  (The other pause above ran none of this program's code: a busy machine.)", "dim")
    say.say(
        "  Now try your own program:  "
        + say.paint("unstall run your_app.py", "cmd")
        + "  (or -m pkg)"
    )
    return True


def _parse(argv: Sequence[str]) -> tuple[bool, bool] | None:
    fast = no_color = False
    for arg in argv:
        if arg in ("-h", "--help"):
            return None
        if arg == "--fast":
            fast = True
        elif arg == "--no-color":
            no_color = True
        else:
            raise ValueError(f"unknown option {arg!r}")
    return fast, no_color


def main(argv: list[str]) -> int:
    """``unstall demo [--fast] [--no-color]``: 0 when the story came out as told."""
    try:
        parsed = _parse(argv)
    except ValueError as exc:
        print(f"unstall demo: {exc} ({USAGE})", file=sys.stderr)
        return 2
    if parsed is None:
        print(
            f"{USAGE}\n\n  --fast      shorter timings (a 0.6 s block, 0.11 s ticks)\n"
            "  --no-color  plain text, also for the report"
        )
        return 0
    fast, no_color = parsed
    color = not no_color and should_color(sys.stderr)
    say = _Narrator(color)
    try:
        with tempfile.TemporaryDirectory(prefix="unstall-demo-") as workdir:
            ok = _tell(say, workdir, FAST_TIMINGS if fast else NORMAL_TIMINGS, pause=not fast)
    except KeyboardInterrupt:
        say.say("\nunstall demo: interrupted")
        return 130
    return 0 if ok else 1


def _tell(say: _Narrator, workdir: str, timings: tuple[float, float], *, pause: bool) -> bool:
    """The whole story; returns whether it came out as told."""
    for name, text in (("blocking_call.py", BLOCKING_SCRIPT), ("fixed_call.py", FIXED_SCRIPT)):
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            f.write(text)
    _intro(say, timings)
    _breathe(pause)
    _step(say, 1, "The blocking version, under the watcher:", "blocking_call.py")
    blocking = _run_watched(workdir, "blocking_call.py", timings, say.color)
    found = _culprit_story(say, blocking, workdir)
    _fix(say)
    _breathe(pause)
    title = "The fixed version: slow_function() now runs in a worker thread."
    _step(say, 2, title, "fixed_call.py")
    fixed = _run_watched(workdir, "fixed_call.py", timings, say.color)
    return _closing(say, fixed) and found and blocking.returncode == 0


def _breathe(pause: bool) -> None:
    """A moment to read the narration before the next run starts (not with --fast)."""
    if pause:
        time.sleep(1.5)
