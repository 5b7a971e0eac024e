"""The fix catalogue: what each kind of stall is told to do."""

from __future__ import annotations

import asyncio
import os

import pytest

from unstall import Frame, Stall
from unstall._report.fixes import ACTIONS, Fix

ASYNCIO_FILE = os.path.join(os.path.dirname(asyncio.__file__), "base_events.py")


def _stall(code: str, call: str | None, kind: str = "unknown", **more: object) -> Stall:
    culprit = Frame("/app/main.py", 7, "handler", code, coroutine=True)
    fields: dict[str, object] = {
        "start_s": 0.0,
        "duration_s": 0.5,
        "thread": "MainThread",
        "thread_id": 1,
        "loop": "loop@1",
        "task": "Task-1",
        "coro": "handler",
        "culprit": culprit,
        "call": call,
        "kind": kind,
        "stack": (Frame("/app/main.py", 30, "<module>"), culprit),
    }
    fields.update(more)
    return Stall(**fields)  # type: ignore[arg-type]


def test_the_code_in_the_fix_names_what_the_source_line_names() -> None:
    stall = _stall("rows = db.execute(QUERY, (n,)).fetchall()", "sqlite3.Connection.execute", "cpu")
    assert stall.fix.action == "to_thread"
    assert "`await unstall.to_thread(db.execute, QUERY, (n,))`" in stall.fix.text
    assert "sqlite3.Connection" not in stall.fix.text


@pytest.mark.parametrize(
    ("code", "call"),
    [
        ("digest = hashlib.sha256(data).hexdigest()", "_hashlib.openssl_sha256"),
        ("h.update(chunk)", "_hashlib.HASH.update"),
        ("packed = zlib.compress(data, 9)", "zlib.compress"),
        ("raw = bz2.compress(data)", "bz2.compress"),
        ("text = fh.read()", "_io.TextIOWrapper.read"),
        ("ctx.load_verify_locations(cafile)", "ssl.SSLContext.load_verify_locations"),
        ("sock.recv(1)", "socket.socket.recv"),
    ],
)
def test_calls_that_release_the_gil_go_to_a_thread_even_when_they_computed(
    code: str, call: str
) -> None:
    assert _stall(code, call, "cpu").fix.action == "to_thread"


@pytest.mark.parametrize(
    ("code", "call", "spelled"),
    [
        ("total = sum(range(n))", "sum", "to_process(sum, range(n))"),
        ("out = json.dumps(payload)", "json.dumps", "to_process(json.dumps, payload)"),
        ("m = PATTERN.match(text)", "re.Pattern.match", "to_process(PATTERN.match, text)"),
    ],
)
def test_c_calls_holding_the_gil_go_to_a_process_even_when_they_looked_idle(
    code: str, call: str, spelled: str
) -> None:
    stall = _stall(code, call, "wait")
    assert stall.fix.action == "to_process"
    assert spelled in stall.fix.text


def test_an_operator_in_a_coroutine_is_moved_into_a_function_for_a_process() -> None:
    stall = _stall('data = b"*" * n', None, "cpu")
    assert stall.fix.action == "to_process"
    assert "plain function" in stall.fix.text


def test_a_sync_function_the_task_calls_is_offloaded_as_its_caller_calls_it() -> None:
    inner = Frame("/app/work.py", 12, "crunch", "while i < n: i += 1")
    caller = Frame("/app/main.py", 7, "handler", "result = crunch(items, 3)", coroutine=True)
    stall = _stall("", None, "cpu", culprit=inner, stack=(caller, inner))
    assert "`await unstall.to_process(crunch, items, 3)`" in stall.fix.text


@pytest.mark.parametrize(
    ("call", "kind"),
    [("asyncio.ensure_future", "cpu"), ("gc.collect", "gc"), ("asyncio.gather", "wait")],
)
def test_nothing_of_asyncio_or_gc_is_sent_to_a_process(call: str, kind: str) -> None:
    stall = _stall(f"{call}(x)", call, kind, gc_s=0.4)
    assert stall.fix.action in ("none", "tune_gc")
    assert "to_process" not in stall.fix.text


def test_a_culprit_in_asyncio_itself_gets_no_offloading_advice() -> None:
    frame = Frame(ASYNCIO_FILE, 1900, "_run_once", "handle._run()")
    stall = _stall("", None, "cpu", culprit=frame, stack=(frame,))
    assert stall.fix.action == "none"
    assert "asyncio's own machinery" in stall.fix.text


def test_no_culprit_says_what_to_look_at_instead_of_a_placeholder() -> None:
    stall = _stall("", None, "unknown", culprit=None, stack=())
    assert stall.fix.action == "none"
    assert "the_call" not in stall.fix.text


def test_a_gc_stall_names_the_generation_and_the_pause() -> None:
    stall = _stall("x = Node()", None, "gc", gc_s=0.42, gc_generations=(2,), gc_collected=10)
    assert stall.fix.action == "tune_gc"
    assert "generation 2" in stall.fix.text
    assert "420 ms" in stall.fix.text
    assert "gc.freeze()" in stall.fix.text


def test_an_import_stall_says_import_it_at_start_up() -> None:
    stall = _stall("import heavy", "heavy", "import")
    assert stall.fix.action == "import_early"
    assert "start-up" in stall.fix.text


def test_every_action_survives_json_and_a_bad_one_is_refused() -> None:
    for action in ACTIONS:
        assert Fix.from_dict(Fix(action, "x").to_dict()) == Fix(action, "x")
    with pytest.raises(ValueError, match="unknown fix action 'run_faster'"):
        Fix.from_dict({"action": "run_faster", "text": ""})
