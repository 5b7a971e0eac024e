"""Parts written by followed processes, and their merge into one report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from unstall._report.parts import PartWriter, merge, read_parts, remove_run_dir
from unstall._report.records import Frame, LoopInfo, Report, Stall


def stall(start: float, line: int = 3) -> Stall:
    return Stall(start, 0.2, "MainThread", 1, "loop@1", culprit=Frame("/app.py", line, "f"))


def test_a_part_read_back_gives_its_stalls_and_its_end(tmp_path: Path) -> None:
    part = PartWriter(str(tmp_path), 4242, "SpawnProcess-1", 100.0)
    part.stall(stall(0.5))
    part.end(2.0, "SpawnProcess-1", [LoopInfo("loop@1", "MainThread", 1, lag=[(0.5, 0.2)])])
    part.close()
    [read] = read_parts(str(tmp_path))
    assert (read.pid, read.role, read.started_at, read.duration_s) == (
        4242,
        "SpawnProcess-1",
        100.0,
        2.0,
    )
    assert read.stalls == [stall(0.5)]
    assert read.loops[0].lag == [(0.5, 0.2)]


def test_a_torn_last_line_is_skipped_and_the_stalls_before_it_kept(tmp_path: Path) -> None:
    part = PartWriter(str(tmp_path), 7, "fork of pid 1", 100.0)
    part.stall(stall(0.5))
    part.close()
    with open(part.path, "ab") as f:
        f.write(b'{"stall": {"start_s": 1.0, "dura')  # killed in the middle of a write
    [read] = read_parts(str(tmp_path))
    assert read.stalls == [stall(0.5)]
    assert read.duration_s is None


def test_a_hang_whose_end_was_not_written_is_read_back_ongoing_as_last_reported(
    tmp_path: Path,
) -> None:
    part = PartWriter(str(tmp_path), 7, "gunicorn worker 1", 100.0)
    part.hang(stall(0.5).with_updates(duration_s=0.1, ongoing=True))
    part.hang(stall(0.5).with_updates(duration_s=1.1, ongoing=True, culprit=Frame("/a", 8, "g")))
    part.close()
    [read] = read_parts(str(tmp_path))
    [hang] = read.stalls
    assert (hang.start_s, hang.duration_s, hang.ongoing) == (0.5, 1.1, True)
    assert hang.culprit == Frame("/a", 8, "g")


def test_a_hang_followed_by_its_end_is_one_stall(tmp_path: Path) -> None:
    part = PartWriter(str(tmp_path), 7, "gunicorn worker 1", 100.0)
    part.hang(stall(0.5).with_updates(duration_s=0.1, ongoing=True))
    never_ended = stall(2.0, line=4).with_updates(duration_s=0.1, ongoing=True)
    part.hang(never_ended)
    part.stall(stall(0.51))
    part.close()
    [read] = read_parts(str(tmp_path))
    assert [(s.start_s, s.ongoing) for s in read.stalls] == [(0.51, False), (2.0, True)]


def test_merge_puts_children_on_the_main_timeline_and_names_every_process(tmp_path: Path) -> None:
    child = PartWriter(str(tmp_path), 4242, "gunicorn worker 1", 101.0)
    child.stall(stall(0.5, line=9).with_updates(process="gunicorn worker 1"))
    child.close()
    main = Report(0.1, stalls=[stall(3.0)], started_at=100.0, duration_s=5.0)
    merged = merge(main, read_parts(str(tmp_path)), 1, "main")
    assert [(s.start_s, s.pid, s.process) for s in merged.stalls] == [
        (1.5, 4242, "gunicorn worker 1"),
        (3.0, 1, "main"),
    ]
    assert [(p.pid, p.role) for p in merged.processes] == [(1, "main"), (4242, "gunicorn worker 1")]
    again = Report.from_json(merged.to_json())
    assert again.stalls == merged.stalls
    assert again.processes == merged.processes


def test_with_no_part_the_report_is_unchanged(tmp_path: Path) -> None:
    main = Report(0.1, stalls=[stall(3.0)], started_at=100.0, duration_s=5.0)
    merged = merge(main, read_parts(str(tmp_path)), os.getpid(), "main")
    assert merged.to_dict() == main.to_dict()
    assert "processes" not in merged.to_dict()
    assert "pid" not in merged.to_dict()["stalls"][0]


def test_an_older_report_without_process_fields_still_reads(tmp_path: Path) -> None:
    data = Report(0.1, stalls=[stall(1.0)]).to_dict()
    assert "pid" not in data["stalls"][0]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Report.read(tmp_path / "old.json")
    assert old.stalls[0].pid is None
    assert old.stalls[0].process is None
    assert old.processes == []


def test_removing_the_run_dir_leaves_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    PartWriter(str(run_dir), 1, "x", 0.0).close()
    remove_run_dir(str(run_dir))
    assert not run_dir.exists()


def test_the_trace_of_several_processes_has_one_perfetto_process_each(tmp_path: Path) -> None:
    from unstall._report.trace import render_trace

    child = PartWriter(str(tmp_path), 4242, "gunicorn worker 1", 100.0)
    child.stall(stall(0.5))  # the same thread ident as the main thread's: a fork
    child.close()
    main = Report(0.1, stalls=[stall(3.0)], started_at=100.0, duration_s=5.0, argv=["app.py"])
    events = render_trace(merge(main, read_parts(str(tmp_path)), 1, "main"))["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {1: "unstall: app.py (pid 1)", 4242: "gunicorn worker 1 (pid 4242)"}
    stalls = [(e["pid"], e["tid"]) for e in events if e["ph"] == "X"]
    assert len(set(stalls)) == 2


def test_the_html_timeline_has_a_lane_per_process_even_with_the_same_loop_id(
    tmp_path: Path,
) -> None:
    from unstall._report.html import _payload

    child = PartWriter(str(tmp_path), 4242, "ForkPoolWorker-1", 100.0)
    child.stall(stall(0.5))  # a forked copy of the parent's loop: same id "loop@1"
    child.close()
    main = Report(0.1, stalls=[stall(3.0)], started_at=100.0, duration_s=5.0)
    payload = _payload(merge(main, read_parts(str(tmp_path)), 1, "main"))
    assert [lane["thread"] for lane in payload["lanes"]] == [
        "MainThread · ForkPoolWorker-1 (pid 4242)",
        "MainThread · main (pid 1)",
    ]
    assert sorted(s["lane"] for s in payload["stalls"]) == [0, 1]


def test_a_quiet_run_of_several_processes_says_how_many_were_watched(tmp_path: Path) -> None:
    from unstall._report.summary import render_summary

    part = PartWriter(str(tmp_path), 4242, "gunicorn worker 1", 100.0)
    part.loop(LoopInfo("loop@1", "MainThread", 1), "gunicorn worker 1")
    part.close()  # then killed: no end record, but its loop was written when it started
    main = Report(0.1, started_at=100.0, duration_s=5.0)
    text = render_summary(merge(main, read_parts(str(tmp_path)), 1, "main"), color=False)
    assert text == (
        "unstall: the loop never stalled above 0.10 s (watched 5.00 s, 2 processes, 1 loop)."
    )
