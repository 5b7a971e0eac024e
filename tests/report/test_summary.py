"""The terminal summary and the live "stuck" line, rendered from real Stall records."""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from unstall import Frame, LoopInfo, Report, Stall
from unstall._report.format import short_path, should_color
from unstall._report.summary import render_hang_line, render_summary

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _stall(
    file: str,
    line: int,
    function: str,
    duration: float,
    *,
    code: str | None = "time.sleep(3)",
    call: str | None = "time.sleep",
    kind: str = "wait",
    task: str | None = "Task-2",
    ongoing: bool = False,
) -> Stall:
    return Stall(
        start_s=1.0,
        duration_s=duration,
        thread="MainThread",
        thread_id=1,
        loop="loop@1",
        task=task,
        coro="test1" if task else None,
        callback=None if task else "<TimerHandle cb()>",
        culprit=Frame(file, line, function, code),
        call=call,
        kind=kind,  # type: ignore[arg-type]
        ongoing=ongoing,
    )


@pytest.fixture
def report(tmp_path: Path) -> Report:
    app = str(tmp_path / "app.py")
    return Report(
        threshold_s=0.1,
        duration_s=12.5,
        stalls=[
            _stall(app, 7, "slow_function", 3.0),
            _stall(app, 7, "slow_function", 1.0),
            _stall(app, 20, "crunch", 0.25, code="total = sum(range(n))", call=None, kind="cpu"),
        ],
    )


# --- colour ------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    return monkeypatch


@contextlib.contextmanager
def _tty() -> Iterator[io.TextIOWrapper]:
    """A real pseudo-terminal (the master side must stay open for isatty to hold)."""
    master, slave = os.openpty()
    try:
        with open(slave, "w") as tty:
            yield tty
    finally:
        os.close(master)


def test_colour_on_a_terminal_and_not_on_a_pipe(clean_env: pytest.MonkeyPatch) -> None:
    with _tty() as tty:
        assert tty.isatty()
        assert should_color(tty)
    assert not should_color(io.StringIO())


def test_no_color_wins_even_on_a_terminal(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("NO_COLOR", "1")
    with _tty() as tty:
        assert not should_color(tty)
    clean_env.setenv("FORCE_COLOR", "1")
    assert not should_color(io.StringIO())


def test_force_color_on_a_pipe(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FORCE_COLOR", "1")
    assert should_color(io.StringIO())
    clean_env.setenv("FORCE_COLOR", "0")
    assert not should_color(io.StringIO())


def test_dumb_terminal_gets_no_colour(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TERM", "dumb")
    with _tty() as tty:
        assert not should_color(tty)


def test_plain_text_has_no_escape_codes_and_colour_does(report: Report) -> None:
    plain = render_summary(report, color=False)
    coloured = render_summary(report, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[" in coloured
    assert ANSI.sub("", coloured) == plain


# --- content -----------------------------------------------------------------------------------


def test_groups_by_culprit_costliest_first_with_counts(report: Report, tmp_path: Path) -> None:
    text = render_summary(report, color=False, cwd=str(tmp_path), width=120)
    lines = text.splitlines()
    assert lines[0].startswith("unstall: the event loop stalled 3 times, 4.25 s in total")
    assert "threshold 0.10 s" in lines[0]
    assert "watched 12.50 s" in lines[0]
    first = next(i for i, line in enumerate(lines) if "app.py:7 in slow_function" in line)
    second = next(i for i, line in enumerate(lines) if "app.py:20 in crunch" in line)
    assert first < second
    assert re.search(r"2x\s+4\.00 s\s+3\.00 s\s+app\.py:7 in slow_function", lines[first])
    assert re.search(r"1x\s+0\.25 s\s+0\.25 s\s+app\.py:20 in crunch", lines[second])
    block = "\n".join(lines[first:second])
    assert "7 | time.sleep(3)" in block
    assert "call: time.sleep" in block
    assert "task: Task-2 (test1)" in block
    assert "fix: blocking call: run it in a thread with `await unstall.to_thread(" in block
    assert "unstall.to_process(" in "\n".join(lines[second:])


def test_columns_are_aligned(report: Report, tmp_path: Path) -> None:
    lines = render_summary(report, color=False, cwd=str(tmp_path)).splitlines()
    rows = [line for line in lines if " in slow_function" in line or " in crunch" in line]
    assert len({row.index("app.py") for row in rows}) == 1
    header = next(line for line in lines if "where" in line)
    assert header.index("where") == rows[0].index("app.py")


def test_paths_relative_inside_cwd_absolute_outside(tmp_path: Path) -> None:
    inside = str(tmp_path / "pkg" / "mod.py")
    assert short_path(inside, str(tmp_path)) == os.path.join("pkg", "mod.py")
    outside = "/somewhere/else/mod.py"
    assert short_path(outside, str(tmp_path)) == outside
    text = render_summary(
        Report(0.1, [_stall(outside, 3, "f", 0.5)], duration_s=1), color=False, cwd=str(tmp_path)
    )
    assert "/somewhere/else/mod.py:3 in f" in text


def test_source_line_read_from_the_file_when_missing(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text("import time\n\n\ndef block():\n    time.sleep(2)  # the culprit\n")
    stall = _stall(str(app), 5, "block", 2.0, code=None)
    assert "5 | time.sleep(2)  # the culprit" in render_summary(Report(0.1, [stall]), color=False)
    assert render_hang_line(stall).endswith(": time.sleep(2)  # the culprit")


def test_ongoing_stall_is_marked(tmp_path: Path) -> None:
    stall = _stall(str(tmp_path / "a.py"), 1, "hang", 9.0, ongoing=True)
    text = render_summary(Report(0.1, [stall], duration_s=9), color=False)
    assert "still stuck here when this report was made" in text


def test_stall_outside_any_task_and_without_culprit() -> None:
    orphan = Stall(0.0, 0.4, "worker-1", 2, "loop@2", callback="<Handle tick()>")
    text = render_summary(Report(0.1, [orphan], duration_s=1), color=False)
    assert "(no frame of your own code was on the stack)" in text
    assert "callback: <Handle tick()>" in text
    assert "thread: worker-1" in text


def test_long_source_lines_are_clipped_to_the_width(tmp_path: Path) -> None:
    code = "x = compute(" + ", ".join(f"argument_{i}" for i in range(40)) + ")"
    text = render_summary(
        Report(0.1, [_stall(str(tmp_path / "a.py"), 1, "f", 0.5, code=code)]), color=False, width=80
    )
    code_line = next(line for line in text.splitlines() if "x = compute(" in line)
    assert len(code_line) == 80
    assert code_line.endswith("...")


def test_many_places_are_capped_with_a_pointer_to_the_json(tmp_path: Path) -> None:
    stalls = [_stall(str(tmp_path / "a.py"), line, "f", 0.2 + line / 100) for line in range(1, 21)]
    text = render_summary(Report(0.1, stalls), color=False)
    assert text.count(" in f\n") + text.endswith(" in f") == 12
    assert "... and 8 more places (see --json for all)" in text


def test_no_stalls_is_one_line_with_threshold_and_watch_time() -> None:
    one_loop = [LoopInfo("a", "MainThread", 1)]
    text = render_summary(Report(0.25, [], loops=one_loop, duration_s=4.2), color=True)
    assert text == "unstall: the loop never stalled above 0.25 s (watched 4.20 s, 1 loop)."
    text = render_summary(Report(0.1, [], duration_s=0.3))
    assert text == "unstall: no asyncio event loop ran, so nothing stalled (watched 0.30 s)."
    two_loops = [LoopInfo("a", "MainThread", 1), LoopInfo("b", "t", 2)]
    text = render_summary(Report(0.1, [], loops=two_loops, duration_s=1.0))
    assert text == "unstall: the loop never stalled above 0.10 s (watched 1.00 s, 2 loops)."


def test_hang_line_names_thread_duration_place_and_code(tmp_path: Path) -> None:
    stall = _stall(str(tmp_path / "app.py"), 12, "handler", 2.04, ongoing=True)
    line = render_hang_line(stall, cwd=str(tmp_path))
    assert (
        line
        == "unstall: loop in MainThread stuck for 2.04 s at app.py:12 in handler: time.sleep(3)"
    )
    coloured = render_hang_line(stall, color=True, cwd=str(tmp_path))
    assert ANSI.sub("", coloured) == line
    bare = Stall(0.0, 0.3, "T", 1, "l", call="socket.socket.recv")
    assert render_hang_line(bare) == (
        "unstall: loop in T stuck for 0.30 s at an unknown place: socket.socket.recv(...)"
    )
