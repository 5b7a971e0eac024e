"""Diagnosis you can trust: C code holding the GIL, imports, GC pauses, and their fixes.

Each case runs a small program from ``fixtures/diagnosis.py`` on a real loop and checks the
culprit line, the kind and the fix. The C-code cases run 20 times in a row: the culprit
must not depend on which thread the OS happens to wake first.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

import unstall
from fixtures import diagnosis
from fixtures.diagnosis import line_of
from unstall import Stall
from unstall._watch import gcwatch, interrupt

THRESHOLD = 0.05
FAST = 0.02
"""The C-code cases block for 50-100 ms: a lower threshold keeps 20 runs quick."""
RUNS = 20


def _watched(
    make: Callable[[], Awaitable[object]], runner: str = "asyncio", threshold: float = THRESHOLD
) -> list[Stall]:
    async def main() -> list[Stall]:
        async with unstall.watch(threshold=threshold, log=False) as watcher:
            kept = await make()  # freed after watching: freeing a big list takes a while
        del kept
        return watcher.stalls

    if runner == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        return uvloop.run(main())  # type: ignore[no-any-return]
    if runner == "thread":
        found: list[list[Stall]] = []
        thread = threading.Thread(target=lambda: found.append(asyncio.run(main())))
        thread.start()
        thread.join()
        return found[0]
    return asyncio.run(main())


def _worst(stalls: list[Stall]) -> Stall:
    assert stalls, "no stall was reported"
    return max(stalls, key=lambda s: s.duration_s)


def _culprit_line(stall: Stall) -> int | None:
    culprit = stall.culprit
    return culprit.line if culprit is not None and culprit.file == diagnosis.HERE else None


CASES: dict[str, Callable[[], Awaitable[object]]] = {
    "c-call": lambda: diagnosis.c_call(4_000_000),
    "c-operator": lambda: diagnosis.c_operator(60_000_000),
    "list-operator": lambda: diagnosis.list_operator(3_000_000),
}


def _never_another_line(case: str, runner: str, at_least: int) -> None:
    right, wrong = 0, []
    for run in range(RUNS):
        stall = _worst(_watched(CASES[case], runner, FAST))
        if _culprit_line(stall) == line_of(case):
            right += 1
            assert stall.fix.action == "to_process", stall.fix
        elif stall.culprit is None:
            assert stall.fix.action == "none", stall.fix
        else:
            wrong.append((run, stall.culprit, stall.method))
    assert wrong == [], f"{len(wrong)} of {RUNS} runs blamed another line: {wrong}"
    assert right >= at_least, f"only {right} of {RUNS} runs named the line"


@pytest.mark.parametrize("runner", ["asyncio", "uvloop"])
@pytest.mark.parametrize("case", list(CASES))
def test_c_code_after_an_await_on_a_main_thread_loop_is_never_blamed_on_another_line(
    case: str, runner: str
) -> None:
    """The timer signal's handler runs right after the C code: every run names the line."""
    _never_another_line(case, runner, at_least=RUNS)


@pytest.mark.parametrize("case", list(CASES))
def test_c_code_on_a_loop_in_another_thread_is_never_blamed_on_another_line(case: str) -> None:
    """No signal reaches a loop outside the main thread: the watchdog's sample right after
    the C code names the line. Rarely, CPython hands the GIL back to the loop thread
    before the watchdog gets it: the stall then has no culprit, never a wrong one."""
    _never_another_line(case, "thread", at_least=RUNS * 3 // 4)


def test_a_catastrophic_regex_is_blamed_on_its_line() -> None:
    stall = _worst(_watched(lambda: diagnosis.regex(22)))
    assert _culprit_line(stall) == line_of("regex")
    assert stall.call == "re.Pattern.match"
    assert stall.fix.action == "to_process"
    assert "to_process(PATTERN.match" in stall.fix.text


def test_json_dumps_of_a_big_object_is_blamed_on_its_line() -> None:
    payload = [{"n": i, "s": str(i)} for i in range(400_000)]
    stall = _worst(_watched(lambda: diagnosis.json_dumps(payload)))
    assert _culprit_line(stall) == line_of("json")
    assert stall.fix.action == "to_process"


def test_hashing_is_sent_to_a_thread_since_it_releases_the_gil() -> None:
    data = b"x" * 50_000_000
    stall = _worst(_watched(lambda: diagnosis.hashing(data)))
    assert _culprit_line(stall) == line_of("hashing")
    assert stall.fix.action == "to_thread"
    assert "`await unstall.to_thread(hashlib.sha256, data)`" in stall.fix.text


def test_the_sqlite_fix_names_the_call_as_the_line_spells_it() -> None:
    stall = _worst(_watched(lambda: diagnosis.sqlite(1_500_000)))
    assert _culprit_line(stall) == line_of("sqlite")
    assert stall.call == "sqlite3.Connection.execute"
    assert stall.fix.action == "to_thread"
    assert "`await unstall.to_thread(db.execute, QUERY, (n,))`" in stall.fix.text


def test_a_slow_import_is_its_own_kind_blamed_on_the_import_line(tmp_path: Path) -> None:
    module = tmp_path / f"{diagnosis.SLOW_MODULE}.py"
    module.write_text("import time\n\ntime.sleep(0.1)\nTOTAL = sum(range(2_000_000))\n")
    stall = _worst(_watched(lambda: diagnosis.slow_import(str(tmp_path))))
    assert stall.kind == "import"
    assert _culprit_line(stall) == line_of("import")
    assert stall.call == diagnosis.SLOW_MODULE
    assert stall.fix.action == "import_early"
    # The stack is complete: from the program down into the imported module.
    files = [f.file for f in stall.stack]
    assert diagnosis.HERE in files
    assert str(module) in files
    assert files.index(diagnosis.HERE) < files.index(str(module))


@pytest.fixture(scope="module")
def cycles() -> Iterator[object]:
    """Long-lived objects in reference cycles: every full collection scans them all."""
    kept = [diagnosis.Node() for _ in range(600_000)]
    yield kept
    del kept


@pytest.fixture
def own_cycles() -> Iterator[object]:
    """The same, over a frozen heap: CPython runs an automatic full collection only once
    the objects that survived since the last one are a quarter of those it holds, so the
    test session's own big heap, unfrozen, would keep it from running at all."""
    gc.collect()
    gc.freeze()
    gc.collect()  # the count of long-lived objects that rule compares with is now ~0
    try:
        # A million: a full collection of them takes about 90 ms here, well over the
        # threshold below on a machine a few times faster.
        kept = [diagnosis.Node() for _ in range(1_000_000)]
        yield kept
        del kept
    finally:
        gc.unfreeze()


def test_an_explicit_gc_collect_is_a_gc_stall_not_cpu_work(cycles: object) -> None:
    stall = _worst(_watched(diagnosis.explicit_gc))
    assert stall.kind == "gc"
    assert _culprit_line(stall) == line_of("explicit-gc")
    assert stall.gc_s >= 0.5 * stall.duration_s
    assert 2 in stall.gc_generations
    assert stall.fix.action == "tune_gc"
    assert "to_process" not in stall.fix.text


def test_an_automatic_collection_is_a_gc_stall_on_the_line_that_triggered_it(
    own_cycles: object,
) -> None:
    stalls = _watched(lambda: diagnosis.automatic_gc(600_000), threshold=FAST)
    gc_stalls = [s for s in stalls if s.kind == "gc"]
    assert gc_stalls, stalls
    for stall in gc_stalls:
        assert stall.fix.action == "tune_gc"
        assert "gc.freeze()" in stall.fix.text
        assert stall.gc_s >= 0.5 * stall.duration_s
        # unstall's own collection callback is never part of what the program did
        files = [f.file for f in stall.stack] + [c.frame.file for c in stall.samples]
        assert not [f for f in files if f.endswith("gcwatch.py")], stall
    # Named where the collection began: in the allocating loop (since 3.12 a collection
    # starts at the next check after the allocation, which may be the loop's jump back),
    # never in the ``__init__`` the allocating line called. One started by asyncio's own
    # machinery between two steps has no line of the program to name.
    loop = range(line_of("automatic-gc") - 1, line_of("automatic-gc") + 3)
    named = [s.culprit for s in gc_stalls if s.culprit is not None]
    assert named, gc_stalls
    for culprit in named:
        assert culprit.function == "automatic_gc", gc_stalls
        assert culprit.line in loop, gc_stalls


def test_nothing_in_asyncio_or_gc_gets_a_to_process_hint(cycles: object) -> None:
    async def flood() -> None:
        await asyncio.gather(*(asyncio.sleep(0) for _ in range(30_000)))

    stalls = _watched(flood) + _watched(diagnosis.explicit_gc)
    for stall in stalls:
        if stall.kind == "gc" or (stall.call or "").startswith(("asyncio.", "gc.")):
            assert stall.fix.action != "to_process", stall


@pytest.fixture
def sigalrm_free() -> Iterator[None]:
    """SIGALRM and the real-time timer unused, as in most programs (pytest-timeout's
    signal method uses them: its timer is put back after the test)."""
    handler = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    timer = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, handler)
        if timer[0]:
            signal.setitimer(signal.ITIMER_REAL, *timer)


@pytest.mark.usefixtures("sigalrm_free")
def test_sigalrm_is_given_back_when_the_watcher_stops() -> None:
    seen = []

    async def main() -> None:
        async with unstall.watch(threshold=THRESHOLD, log=False):
            await asyncio.sleep(0)
            seen.append(signal.getsignal(signal.SIGALRM))

    asyncio.run(main())
    assert seen
    assert seen[0] is not signal.SIG_DFL  # the route was on while watching
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_timer_expiring_inside_the_watchdogs_own_poll_blames_nothing() -> None:
    saved = interrupt._poll
    try:
        interrupt.poll_began(10.0)
        assert interrupt._in_a_poll(10.02)  # a poll under way (reading a file, say)
        interrupt.poll_ended(10.05)
        assert interrupt._in_a_poll(10.02)
        # Expired after the poll: the watchdog could not get the GIL back, C code had it.
        assert not interrupt._in_a_poll(10.06)
        interrupt.poll_began(10.07)
        assert not interrupt._in_a_poll(10.06)
    finally:
        interrupt._poll = saved


@pytest.mark.usefixtures("sigalrm_free")
def test_the_timer_signal_alone_names_c_code_on_the_main_thread() -> None:
    stall = _worst(_watched(CASES["c-operator"], "asyncio", FAST))
    assert _culprit_line(stall) == line_of("c-operator")
    assert stall.method in ("signal", "checkpoint")


def test_a_programs_own_sigalrm_handler_is_left_alone() -> None:
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        stall = _worst(_watched(CASES["c-call"], "asyncio", FAST))
        assert signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL
        assert fired == []  # never armed by the watcher
        # Still attributed, by the watchdog's sample after the gap.
        assert _culprit_line(stall) == line_of("c-call")
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_a_failing_garbage_collection_callback_never_reaches_the_program(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A collection's stack is read in ``gc.callbacks``, inside the program's allocation:
    something refusing that read (blockbuster refusing ``os.path.abspath``) is our loss."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Blocking call to os.path.abspath")

    monkeypatch.setattr(gcwatch, "capture_own", refuse)
    monkeypatch.setattr(gcwatch, "_NOTE_S", 0.0)
    gcwatch.watch_thread(threading.get_ident(), 0.0)
    try:
        gcwatch._on_gc("start", {"generation": 2, "collected": 0})
        gcwatch._on_gc("stop", {"generation": 2, "collected": 0})  # must not raise
    finally:
        gcwatch.watch_thread(threading.get_ident(), None)
