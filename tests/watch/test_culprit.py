"""Choosing the culprit: whose code a frame is, which frame to blame, naming the call."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

import unstall
from unstall._report.records import Frame
from unstall._watch.attribution import LoopMeta, build_stall, split_by_callback
from unstall._watch.callname import call_at, callee_from_line
from unstall._watch.culprit import callback_start, culprit_index, origin
from unstall._watch.sampler import Sample

META = LoopMeta("loop@1", "MainThread", 1)
EVENTS = str(Path(asyncio.__file__).parent / "events.py")
LIB = str(Path(httpx.__file__))
USER = "/srv/app/handlers.py"


def test_origin_of_files() -> None:
    assert origin(asyncio.__file__) == "stdlib"
    assert origin(socket.__file__) == "stdlib"
    assert origin(httpx.__file__) == "library"
    assert origin(unstall.__file__) == "unstall"
    assert origin(__file__) == "user"
    assert origin("<frozen runpy>") == "stdlib"
    assert origin("<string>") == "user"


def test_culprit_is_the_innermost_user_frame_of_the_callback() -> None:
    files = [USER, EVENTS, USER, LIB, USER, LIB, socket.__file__]
    functions = ["<module>", "_run", "handler", "client", "hook", "send", "recv"]
    start = callback_start(files, functions)
    assert start == 2
    assert culprit_index(files, start) == 4  # called back from a library: still ours


def test_without_user_code_the_innermost_library_frame_is_blamed() -> None:
    files = [USER, EVENTS, LIB, LIB, socket.__file__]
    functions = ["<module>", "_run", "serve", "read", "recv"]
    start = callback_start(files, functions)
    # The user's <module> frame is outside the callback: not the culprit.
    assert culprit_index(files, start) == 3


def test_with_only_stdlib_the_innermost_frame_is_blamed() -> None:
    files = [USER, EVENTS, socket.__file__]
    assert culprit_index(files, callback_start(files, ["<module>", "_run", "recv"])) == 2
    assert culprit_index([], 0) == -1


def probe_call() -> str | None:
    """Name the call the caller is making right now (it is calling this function)."""
    frame = sys._getframe(1)
    return call_at(frame)


class Client:
    def __init__(self) -> None:
        self.conn = self

    def fetch(self) -> str | None:
        return probe_call()


def test_call_names_resolve_statically() -> None:
    assert probe_call() == f"{__name__}.probe_call"
    client = Client()
    # The call in progress in the caller of probe_call() is fetch(), seen from fetch's caller.
    frame_names: list[str | None] = []

    def outer() -> None:
        frame_names.append(client.conn.fetch())

    outer()
    assert frame_names == [f"{__name__}.probe_call"]


def test_call_names_of_blocking_c_functions_seen_from_another_thread() -> None:
    lock = threading.Lock()
    lock.acquire()
    a, b = socket.socketpair()
    names: dict[str, str | None] = {}

    def waiter(kind: str) -> None:
        if kind == "lock":
            lock.acquire()  # blocks until released below
            lock.release()
        elif kind == "recv":
            a.recv(1)
        else:
            time.sleep(0.3)

    for kind in ("lock", "recv", "sleep"):
        thread = threading.Thread(target=waiter, args=(kind,))
        thread.start()
        time.sleep(0.1)
        frame = sys._current_frames()[thread.ident]  # type: ignore[index]
        names[kind] = call_at(frame)
        del frame
        if kind == "lock":
            lock.release()
        elif kind == "recv":
            b.send(b"x")
        thread.join()
    a.close()
    b.close()
    assert names == {
        "lock": "_thread.lock.acquire",
        "recv": "socket.socket.recv",
        "sleep": "time.sleep",
    }


def test_callee_from_a_source_line() -> None:
    assert callee_from_line("    data = json.dumps(obj)\n") == "json.dumps"
    assert callee_from_line("return re.match(p, s)") == "re.match"
    assert callee_from_line("x = 1") is None
    assert callee_from_line("if (") is None


def _frame(line: int, file: str = USER, fn: str = "handler") -> Frame:
    return Frame(file, line, fn)


def _sample(
    t: float,
    line: int,
    root: int | None = 1,
    method: str = "sampler",
    call: str | None = "time.sleep",
) -> Sample:
    frames = (_frame(1, fn="<module>"), _frame(line))
    return Sample(t, frames, 1, call=call, root=root, task="T", coro="c", method=method)


def test_the_culprit_line_with_the_most_time_wins() -> None:
    # A dump at 0.1 then samples at 0.9..1.0: the dump stands for 0.0-0.9 (the GIL held).
    samples = [_sample(0.1, 10, method="faulthandler", call="sum")] + [
        _sample(0.9 + i / 100, 20) for i in range(10)
    ]
    stall = build_stall(samples, 0.0, 1.0, META)
    assert stall.culprit is not None
    assert stall.culprit.line == 10
    assert stall.method == "faulthandler"
    assert stall.kind == "cpu"
    assert stall.sample_count == 11
    assert [s.count for s in stall.samples] == [10, 1]  # where the samples fell
    assert stall.duration_s == 1.0


def test_no_samples_still_gives_a_stall_with_its_duration() -> None:
    stall = build_stall([], 2.0, 2.5, META)
    assert stall.duration_s == 0.5
    assert stall.culprit is None
    assert stall.method == "none"
    assert stall.thread == "MainThread"


def test_split_where_the_running_callback_changes() -> None:
    samples = [_sample(t / 10, 10, root=1) for t in range(1, 4)]
    samples += [_sample(t / 10, 30, root=2) for t in range(5, 9)]
    pieces = split_by_callback(samples, 0.0, 1.0)
    assert [(round(lo, 3), round(hi, 3), len(p)) for lo, hi, p in pieces] == [
        (0.0, 0.4, 3),
        (0.4, 1.0, 4),
    ]


def test_kind_comes_from_the_threads_cpu_clock() -> None:
    waiting = [_sample(t / 10, 10) for t in range(5)]
    for s in waiting:
        s.cpu = 1.0
    assert build_stall(waiting, 0.0, 0.5, META).kind == "wait"
    computing = [_sample(t / 10, 10, call=None) for t in range(5)]
    for s in computing:
        s.cpu = s.t * 0.9
    assert build_stall(computing, 0.0, 0.5, META).kind == "cpu"


def test_a_known_waiting_call_is_a_wait_whatever_the_clocks_say() -> None:
    # Busy clocks (runnable, waiting for the GIL) and a faulthandler dump first: still a
    # lock wait, so the hint is a thread, not a process.
    samples = [_sample(0.1, 10, method="faulthandler", call="lock.acquire")]
    samples += [_sample(0.5 + t / 100, 10, call="_thread.lock.acquire") for t in range(10)]
    for s in samples:
        s.cpu = s.t * 0.9
    stall = build_stall(samples, 0.0, 0.6, META)
    assert stall.method == "faulthandler"
    # The dump's name, read from the source line, is the sampler's resolved one.
    assert stall.call == "_thread.lock.acquire"
    assert stall.kind == "wait"
    assert "to_thread" in stall.fix_hint
    for call in ("time.sleep", "socket.socket.recv", "subprocess.Popen.wait", "os.read"):
        waiting = [_sample(t / 10, 10, call=call) for t in range(5)]
        for s in waiting:
            s.cpu = s.t
        assert build_stall(waiting, 0.0, 0.5, META).kind == "wait", call


def test_code_is_read_for_the_culprit_and_stack() -> None:
    frame = sys._getframe()
    here = Frame(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
    stall = build_stall([Sample(0.5, (here,), 0)], 0.0, 1.0, META)
    assert stall.culprit is not None
    assert stall.culprit.code is not None
    assert stall.culprit.code.startswith("here = Frame(")
    assert stall.stack == (stall.culprit,)
