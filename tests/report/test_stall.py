"""The report records and their JSON format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unstall import Frame, LoopInfo, Report, ReportError, Stall
from unstall._report.records import SampleCount, group_by_culprit


def _stall(line: int, duration: float, kind: str = "wait") -> Stall:
    culprit = Frame("/app/main.py", line, "slow_function", "time.sleep(3)")
    return Stall(
        start_s=1.0,
        duration_s=duration,
        thread="MainThread",
        thread_id=1,
        loop="_UnixSelectorEventLoop@0x1",
        task="Task-2",
        coro="test1",
        culprit=culprit,
        call="time.sleep",
        kind=kind,  # type: ignore[arg-type]
        stack=(Frame("/app/main.py", 30, "<module>"), culprit),
        samples=(SampleCount(culprit, 29),),
        sample_count=29,
    )


def test_report_round_trips_through_json(tmp_path: Path) -> None:
    report = Report(
        threshold_s=0.1,
        stalls=[_stall(7, 3.0), _stall(9, 0.5, "cpu")],
        loops=[LoopInfo("loop-1", "MainThread", 1, lag=[(0.0, 0.001), (1.0, 3.0)])],
        started_at=1_700_000_000.0,
        duration_s=5.0,
        argv=["app.py"],
    )
    path = tmp_path / "report.json"
    report.write(path)
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["stalls"][0]["culprit"] == {
        "file": "/app/main.py",
        "line": 7,
        "function": "slow_function",
        "code": "time.sleep(3)",
    }
    assert Report.read(path) == report


def test_group_by_culprit_orders_by_total_time() -> None:
    groups = group_by_culprit([_stall(9, 0.5), _stall(7, 3.0), _stall(9, 0.4)])
    assert [(c.line if c else None, len(g)) for c, g in groups] == [(7, 1), (9, 2)]


def test_a_known_waiting_call_goes_to_a_thread_whatever_the_clocks_said() -> None:
    assert _stall(7, 1.0, "wait").fix.action == "to_thread"
    assert _stall(7, 1.0, "cpu").fix.action == "to_thread"


def test_an_unknown_call_is_offloaded_by_its_measured_kind() -> None:
    stall = _stall(7, 1.0).with_updates(call="app.crunch")
    assert stall.with_updates(kind="wait").fix.action == "to_thread"
    assert stall.with_updates(kind="cpu").fix.action == "to_process"
    assert "to_process" in stall.with_updates(kind="cpu").fix_hint


def test_the_fix_round_trips_and_is_decided_again_when_the_stall_changes() -> None:
    stall = _stall(7, 1.0)
    data = stall.to_dict()
    assert data["fix"] == {"action": "to_thread", "text": stall.fix.text}
    assert Stall.from_dict(data) == stall
    assert stall.with_updates(kind="gc", gc_s=0.9).fix.action == "tune_gc"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"a": 1}', "not an unstall report"),
        ('{"version": 99, "stalls": []}', "unsupported report version"),
        ('{"version": 1, "stalls": [{"start_s": "x"}]}', "malformed"),
    ],
)
def test_bad_report_files_raise_report_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ReportError, match=message):
        Report.read(path)


def test_missing_report_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="cannot read"):
        Report.read(tmp_path / "absent.json")


def test_a_coroutine_frame_round_trips_and_compares_like_any_frame() -> None:
    plain = Frame("/app/main.py", 7, "helper", "time.sleep(3)")
    async_frame = Frame("/app/main.py", 7, "helper", "time.sleep(3)", coroutine=True)
    assert plain == async_frame
    assert hash(plain) == hash(async_frame)
    assert "coroutine" not in plain.to_dict()
    assert Frame.from_dict(async_frame.to_dict()).coroutine is True
    assert Frame.from_dict(plain.to_dict()).coroutine is False


def test_fix_hint_offloads_the_call_when_the_culprit_is_an_async_helper() -> None:
    helper = Frame("/app/main.py", 7, "helper", "time.sleep(3)", coroutine=True)
    stall = _stall(7, 1.0).with_updates(culprit=helper)
    assert "to_thread(time.sleep, 3)" in stall.fix_hint


def test_fix_hint_names_the_sync_function_the_task_calls() -> None:
    stall = _stall(7, 1.0)
    assert "to_thread(slow_function, ...)" in stall.fix_hint
    # blocking directly inside the coroutine: offload the innermost call instead
    assert "to_thread(time.sleep, 3)" in stall.with_updates(coro="slow_function").fix_hint
    assert (
        "to_thread(time.sleep, ...)"
        in stall.with_updates(culprit=Frame("/app/main.py", 3, "<module>")).fix_hint
    )
