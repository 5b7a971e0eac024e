"""unstall's own failures never become the user's (issue 20).

Each internal step is made to raise (monkeypatched), and a loop under ``watch()``, a test
under ``pytest --unstall`` and a program under ``unstall run`` must still complete with
their own result, while the report says what was lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import textwrap
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

import unstall
from helpers import run_python
from unstall._report import incidents
from unstall._strict import check as strict_check
from unstall._strict import rules as strict_rules
from unstall._watch import faultdump, loop_hooks, probe, watchdog

pytest_plugins = ["pytester"]

THRESHOLD = 0.1


class Injected(RuntimeError):
    """The failure planted in one of unstall's steps."""


def boom(*args: Any, **kwargs: Any) -> Any:
    raise Injected("injected fault")


async def blocks_then_returns() -> str:
    await asyncio.sleep(0.02)
    time.sleep(0.25)  # a stall, for the steps that only run when one happens
    await asyncio.sleep(0.12)  # long enough for a heartbeat on every loop kind
    return "the program's own result"


# (what breaks, the attribute, what the report must say was lost)
WATCH_STEPS = [
    (loop_hooks, "install", "watching did not start"),
    (loop_hooks, "running_loops", "watching did not start"),
    (watchdog.Monitor, "_start_probe", "a loop that started is not watched"),
    (probe.LoopProbe, "boundary", "watching stopped for loop"),
    (probe.LoopProbe, "_record_lag", "watching stopped for loop"),
    (watchdog.Monitor, "_poll_probe", "watching stopped for loop"),
    (watchdog, "capture", "watching stopped for loop"),
    (faultdump, "tick", "internal error"),
    (watchdog.Monitor, "loops_for", "the loops' lag is missing"),
    (watchdog.Monitor, "remove", "stalls of the last moments may be missing"),
]


# uvloop has no Python selector: the select wrapper ("boundary") does not exist there.
WATCH_CASES = [
    pytest.param(owner, attr, lost, factory, id=f"{owner.__name__}.{attr}-{name}")
    for owner, attr, lost in WATCH_STEPS
    for name, factory in [("asyncio", asyncio.new_event_loop), ("uvloop", uvloop.new_event_loop)]
    if not (name == "uvloop" and attr == "boundary")
]


@pytest.mark.parametrize(("owner", "attr", "lost", "factory"), WATCH_CASES)
def test_a_loop_under_watch_completes_when_a_step_of_unstall_fails(
    owner: Any,
    attr: str,
    lost: str,
    factory: Callable[[], asyncio.AbstractEventLoop],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(owner, attr, boom)
    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    loop = factory()
    try:
        result = loop.run_until_complete(blocks_then_returns())
    finally:
        loop.close()
    watcher.stop()
    monkeypatch.undo()
    watchdog.monitor.remove(watcher._subscription)  # when remove() itself was broken
    assert result == "the program's own result"
    notes = watcher.report().notes
    assert any(lost in note and "see the unstall log" in note for note in notes), notes


def test_inside_a_coroutine_a_failing_start_still_runs_the_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watchdog.Monitor, "add", boom)

    async def main() -> tuple[str, unstall.Watcher]:
        async with unstall.watch(threshold=THRESHOLD, log=False) as watcher:
            return await blocks_then_returns(), watcher

    result, watcher = asyncio.run(main())
    assert result == "the program's own result"
    assert not watcher.running
    assert any("watching did not start" in n for n in watcher.report().notes)


def test_bad_arguments_are_still_reported_to_the_caller() -> None:
    with pytest.raises(ValueError, match="threshold must be a positive number"):
        unstall.watch(threshold=-1)


def test_an_internal_error_is_logged_once_with_its_traceback_at_debug(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="unstall")
    where = f"a step made up for this test {time.monotonic()}"  # not yet warned about
    for _ in range(3):
        try:
            raise Injected("injected fault")
        except Injected as exc:
            incidents.contain(where, "nothing really", exc)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and where in r.message]
    tracebacks = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert len(warnings) == 1
    assert "Injected: injected fault" in warnings[0].message
    assert len([r for r in tracebacks if where in r.message]) == 3


def test_a_dead_weak_proxy_and_raising_objects_in_the_heap_break_nothing() -> None:
    class Thing:
        pass

    class Raising:
        @property  # type: ignore[misc]
        def __class__(self) -> type:
            raise Injected("__class__")

        def __getattr__(self, name: str) -> Any:
            raise Injected(name)

    thing = Thing()
    heap = [weakref.proxy(thing), Raising()]
    del thing
    with pytest.raises(ReferenceError):
        isinstance(heap[0], asyncio.AbstractEventLoop)  # what broke FastAPI's suite
    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    try:
        assert asyncio.run(blocks_then_returns()) == "the program's own result"
    finally:
        watcher.stop()
    assert watcher.report().notes == []
    assert len(heap) == 2


class LazyProxy:
    """Like Django's ``SimpleLazyObject``: any attribute read evaluates it (here: raises)."""

    touched = False

    def __getattr__(self, name: str) -> Any:
        LazyProxy.touched = True
        raise Injected(f"lazy object evaluated for {name}")

    __call__ = staticmethod(time.sleep)  # a call into C: the stall is named after ``lazy``


def test_a_stall_in_a_call_on_a_lazy_proxy_is_named_without_touching_it() -> None:
    lazy = LazyProxy()

    async def main() -> str:
        await asyncio.sleep(0.02)
        lazy(0.3)  # the culprit
        await asyncio.sleep(0.02)
        return "done"

    watcher = unstall.watch(threshold=THRESHOLD, log=False)
    try:
        assert asyncio.run(main()) == "done"
    finally:
        watcher.stop()
    (stall,) = [s for s in watcher.stalls if s.culprit and s.culprit.function == "main"]
    assert stall.culprit is not None
    assert stall.culprit.code == "lazy(0.3)  # the culprit"
    assert stall.call == "lazy"
    assert not LazyProxy.touched
    assert watcher.report().notes == []


# --- strict mode ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "attr"),
    [(strict_check, "_verdict"), (strict_rules.Rule, "blocks"), (strict_check, "_start")],
    ids=["verdict", "rule", "start"],
)
def test_a_call_under_strict_mode_completes_when_strict_mode_fails(
    owner: Any, attr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owner, attr, boom)
    since = time.monotonic()

    async def main() -> str:
        with unstall.strict(action="raise"):
            time.sleep(0.01)
            with open(__file__, "rb") as f:
                f.read(1)
            return "done"

    assert asyncio.run(main()) == "done"
    notes = incidents.notes_since(since)
    assert any("see the unstall log" in note for note in notes), notes


def test_strict_mode_still_raises_blocking_call_error() -> None:
    async def main() -> None:
        with unstall.strict(action="raise"):
            time.sleep(0.01)

    with pytest.raises(unstall.BlockingCallError):
        asyncio.run(main())


# --- pytest --unstall ------------------------------------------------------------------------

SUITE = """
import asyncio
import time

import pytest


@pytest.mark.asyncio
async def test_passes():
    await asyncio.sleep(0.01)
    time.sleep(0.01)


@pytest.mark.asyncio
async def test_fails_on_its_own():
    await asyncio.sleep(0.01)
    assert 1 == 2


def test_sync_with_a_loop():
    assert asyncio.run(asyncio.sleep(0, result=3)) == 3
"""

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""

PLUGIN_STEPS = [
    ("unstall._watch.watchdog:Monitor.add", "watching did not start"),
    ("unstall._watch.watchdog:Monitor.remove", "stalls of the last moments may be missing"),
    ("unstall._watch.probe:LoopProbe.start", "a loop that started is not watched"),
    ("unstall._watch.watchdog:Monitor._poll_probe", "watching stopped for loop"),
    ("unstall._plugin.guard:distinct", "stalls of this phase were lost"),
    ("unstall._plugin.session:_judge", "a stall of this test may be unreported"),
    ("unstall._plugin.session:Session._start", "this test was not watched"),
    ("unstall._strict.check:_start", "blocking calls may go unchecked"),
    ("unstall._strict.api:strict.install", "strict mode was off for this test"),
]

INJECT_CONFTEST = """
import importlib, os

def _boom(*args, **kwargs):
    raise RuntimeError("injected fault")

_target = os.environ["UNSTALL_INJECT"]
_module, _, _path = _target.partition(":")
_owner = importlib.import_module(_module)
*_parents, _attr = _path.split(".")
for _p in _parents:
    _owner = getattr(_owner, _p)
setattr(_owner, _attr, _boom)
"""


@pytest.mark.parametrize(("target", "lost"), PLUGIN_STEPS, ids=[t for t, _ in PLUGIN_STEPS])
def test_a_test_under_pytest_unstall_keeps_its_own_outcome_when_a_step_fails(
    target: str, lost: str, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(INJECT_CONFTEST)
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("UNSTALL_INJECT", target)
    args = ["--unstall", "-p", "no:cacheprovider"]
    if "strict" in target:
        args.append("--unstall-strict")
    result = pytester.runpytest_subprocess(*args)
    out = result.stdout.str()
    assert result.parseoutcomes() == {"passed": 2, "failed": 1}, out
    assert "FAILED test_suite.py::test_fails_on_its_own - assert 1 == 2" in out
    assert "unstall: note:" in out, out
    assert lost in out, out


# --- unstall run -------------------------------------------------------------------------------

PROGRAM = """
import asyncio, sys, time

async def main():
    await asyncio.sleep(0.02)
    time.sleep(0.25)
    await asyncio.sleep(0.12)
    return 42

print("result", asyncio.run(main()))
sys.exit(3)
"""

LAUNCHER = """
import importlib, sys

def boom(*args, **kwargs):
    raise RuntimeError("injected fault")

module, _, path = sys.argv[1].partition(":")
owner = importlib.import_module(module)
*parents, attr = path.split(".")
for p in parents:
    owner = getattr(owner, p)
setattr(owner, attr, boom)
from unstall._cli.main import main
sys.exit(main(["run", *sys.argv[2:]]))
"""

RUN_STEPS = [
    ("unstall._watch.watchdog:Monitor.add", "watching did not start"),
    ("unstall._watch.probe:LoopProbe.boundary", "watching stopped for loop"),
    ("unstall._watch.watchdog:Monitor._poll_probe", "watching stopped for loop"),
    ("unstall._cli.run:Session.__init__", "the program ran unwatched"),
    ("unstall._cli.run:render_summary", "no summary"),
    ("unstall._cli.run:Session.finish", "the report is incomplete"),
    ("unstall._report.records:Report.write", "the --json file is stale"),
]


@pytest.mark.parametrize(("target", "lost"), RUN_STEPS, ids=[t for t, _ in RUN_STEPS])
def test_a_program_under_unstall_run_keeps_its_output_and_status_when_a_step_fails(
    target: str, lost: str, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(PROGRAM))
    (tmp_path / "launch.py").write_text(textwrap.dedent(LAUNCHER))
    json_args = ["--json", "out.json"] if "write" in target else []
    proc = run_python(["launch.py", target, *json_args, "app.py"], tmp_path)
    assert proc.stdout == "result 42\n", proc.stderr
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lost in proc.stderr, proc.stderr


def test_the_json_report_lists_what_was_lost(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent(PROGRAM))
    (tmp_path / "launch.py").write_text(textwrap.dedent(LAUNCHER))
    target = "unstall._watch.probe:LoopProbe.boundary"
    proc = run_python(["launch.py", target, "--json", "out.json", "app.py"], tmp_path)
    assert proc.returncode == 3, proc.stderr
    notes = json.loads((tmp_path / "out.json").read_text())["notes"]
    assert any("watching stopped for loop" in n for n in notes), notes
    assert "  note: watching stopped for loop" in proc.stderr
