"""The Chrome Trace Event Format output (Perfetto, chrome://tracing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from report_samples import (
    HOSTILE,
    MAIN_TID,
    WORKER_TID,
    empty_report,
    hostile_report,
    many_stalls_report,
    realistic_report,
    watched_report,
)
from unstall import Report
from unstall._report.trace import render_trace, write_trace


def _load(report: Report, tmp_path: Path) -> dict:
    path = tmp_path / "trace.json"
    write_trace(report, path)
    return json.loads(path.read_text(encoding="utf-8"))


def test_trace_is_object_form_with_ms_display(tmp_path: Path) -> None:
    trace = _load(realistic_report(), tmp_path)
    assert trace["displayTimeUnit"] == "ms"
    assert isinstance(trace["traceEvents"], list)
    assert trace["otherData"]["started_at"] == 1_764_115_200.0
    for event in trace["traceEvents"]:
        assert {"name", "ph", "pid", "tid"} <= event.keys()


def test_every_stall_is_a_complete_event_on_its_thread(tmp_path: Path) -> None:
    report = realistic_report()
    events = [e for e in _load(report, tmp_path)["traceEvents"] if e["ph"] == "X"]
    assert len(events) == len(report.stalls)
    by_ts = {e["ts"]: e for e in events}
    for stall in report.stalls:
        event = by_ts[round(stall.start_s * 1e6, 3)]
        assert event["dur"] == pytest.approx(stall.duration_s * 1e6)
        assert event["tid"] == (1 if stall.thread == "MainThread" else 2)
        assert event["args"]["thread_id"] == stall.thread_id
        assert stall.culprit is not None
        assert f"{stall.culprit.function} (" in event["name"]
        assert event["name"].endswith(f":{stall.culprit.line})")
        assert event["args"]["task"] == stall.task
        assert event["args"]["call"] == stall.call
        # the stack is innermost first and complete
        assert len(event["args"]["stack"]) == len(stall.stack)
        assert event["args"]["stack"][0].startswith(stall.stack[-1].function)


def test_stall_name_uses_culprit_function_and_base_name() -> None:
    trace = render_trace(realistic_report())
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert "render_invoice_pdf (reports.py:117)" in names
    assert "fetch_user (users.py:42)" in names


def test_ongoing_stall_is_marked_as_a_hang() -> None:
    trace = render_trace(realistic_report())
    hangs = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["args"]["ongoing"]]
    assert len(hangs) == 1
    assert hangs[0]["name"].startswith("HANG refresh_cache")
    assert "ongoing" in hangs[0]["cat"].split(",")


def test_thread_name_metadata_per_lane() -> None:
    trace = render_trace(realistic_report())
    names = {
        e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"
    }
    assert names == {1: "MainThread (asyncio loop)", 2: "loop-worker (uvloop loop)"}
    process = [e for e in trace["traceEvents"] if e["name"] == "process_name"]
    assert process[0]["args"]["name"] == "unstall: app/main.py --port 8000"


def test_tids_fit_perfetto_and_keep_the_thread_ident() -> None:
    # Perfetto keeps 32 bits of a tid and merges threads whose idents do not fit
    trace = render_trace(realistic_report())
    for event in trace["traceEvents"]:
        assert 0 <= event["tid"] < 2**31
    idents = {e["tid"]: e["args"]["thread_id"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert idents == {1: MAIN_TID, 2: WORKER_TID}
    counters = {e["name"]: e["tid"] for e in trace["traceEvents"] if e["ph"] == "C"}
    assert counters == {"loop lag: MainThread": 1, "loop lag: loop-worker": 2}


def test_loop_lag_is_a_counter_per_loop() -> None:
    report = realistic_report()
    counters = [e for e in render_trace(report)["traceEvents"] if e["ph"] == "C"]
    assert len(counters) == sum(len(loop.lag) for loop in report.loops)
    main = [e for e in counters if e["name"] == "loop lag: MainThread"]
    assert len(main) == len(report.loops[0].lag)
    # the lag spikes to the worst stall's duration (4.2 s) and is in ms
    assert max(e["args"]["lag_ms"] for e in main) == pytest.approx(4200, rel=0.01)
    assert all(e["ts"] >= 0 for e in counters)


def test_empty_and_many(tmp_path: Path) -> None:
    empty = _load(empty_report(), tmp_path)
    assert not [e for e in empty["traceEvents"] if e["ph"] == "X"]
    assert [e for e in empty["traceEvents"] if e["ph"] == "C"]
    many = render_trace(many_stalls_report(1000))
    assert len([e for e in many["traceEvents"] if e["ph"] == "X"]) == 1000


def test_hostile_strings_survive_json(tmp_path: Path) -> None:
    trace = _load(hostile_report(), tmp_path)
    (event,) = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert HOSTILE in event["name"]
    assert event["args"]["task"] == f"task {HOSTILE}"


def test_unwritable_path_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_trace(realistic_report(), tmp_path / "missing-dir" / "t.json")
    assert not list(tmp_path.iterdir())


def test_a_real_watched_run(tmp_path: Path) -> None:
    report = watched_report()
    assert {s.thread for s in report.stalls} == {"MainThread", "worker"}
    trace = _load(report, tmp_path)
    stalls = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(stalls) == len(report.stalls)
    names = {
        e["tid"]: e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"
    }
    for event in stalls:
        assert names[event["tid"]].startswith(("MainThread", "worker"))
        assert event["dur"] >= 100_000
    assert any(e["name"].startswith("main_loop (report_samples.py:") for e in stalls)
    assert [e for e in trace["traceEvents"] if e["ph"] == "C"]
