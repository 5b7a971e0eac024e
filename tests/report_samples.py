"""Synthetic but realistic reports for the output tests (HTML, trace, report CLI, metrics).

``realistic_report()`` looks like a web service watched for 30 s: two loops in two
threads, stalls of every kind and severity with deep stacks, and a hang still going on
when the report was written. The other builders cover the edges: no stalls at all,
1,000 stalls, and strings that are hostile to HTML and JSON.
"""

from __future__ import annotations

import math
import random

from unstall import Frame, LoopInfo, Report, Stall
from unstall._report.records import SampleCount

MAIN_TID = 140_245_871_261_504
WORKER_TID = 140_245_850_289_856
MAIN_LOOP = "_UnixSelectorEventLoop@0x7f8c2a1b3d90"
WORKER_LOOP = "uvloop.Loop@0x7f8c29f0e5b0"
SITE = "/usr/lib/python3/site-packages"
APP = "/srv/shop/app"


def _framework_stack() -> tuple[Frame, ...]:
    """The outer frames every request handler runs under (uvicorn + starlette)."""
    return (
        Frame(f"{APP}/main.py", 88, "<module>", "uvicorn.run(app, port=8000)"),
        Frame(f"{SITE}/uvicorn/main.py", 579, "run", "server.run()"),
        Frame(
            "/usr/lib/python3.11/asyncio/runners.py",
            118,
            "run",
            "return self._loop.run_until_complete(task)",
        ),
        Frame(
            "/usr/lib/python3.11/asyncio/base_events.py",
            640,
            "run_until_complete",
            "self.run_forever()",
        ),
        Frame("/usr/lib/python3.11/asyncio/base_events.py", 607, "run_forever", "self._run_once()"),
        Frame("/usr/lib/python3.11/asyncio/base_events.py", 1922, "_run_once", "handle._run()"),
        Frame(
            "/usr/lib/python3.11/asyncio/events.py",
            80,
            "_run",
            "self._context.run(self._callback, *self._args)",
        ),
        Frame(f"{SITE}/uvicorn/protocols/http/h11_impl.py", 408, "run_asgi", "result = await app("),
        Frame(
            f"{SITE}/starlette/applications.py",
            123,
            "__call__",
            "await self.middleware_stack(scope, receive, send)",
        ),
        Frame(
            f"{SITE}/starlette/middleware/errors.py",
            164,
            "__call__",
            "await self.app(scope, receive, _send)",
        ),
        Frame(
            f"{SITE}/starlette/routing.py",
            718,
            "__call__",
            "await route.handle(scope, receive, send)",
        ),
        Frame(
            f"{SITE}/starlette/routing.py", 276, "handle", "await self.app(scope, receive, send)"
        ),
        Frame(f"{SITE}/starlette/routing.py", 66, "app", "response = await func(request)"),
    )


def _stall(
    start: float,
    duration: float,
    *,
    culprit: Frame,
    call: str,
    kind: str,
    inner: tuple[Frame, ...],
    task: str | None = "Task-17",
    coro: str | None = "get_order",
    worker: bool = False,
    ongoing: bool = False,
) -> Stall:
    stack = (*_framework_stack(), culprit, *inner)
    samples = max(1, int(duration / 0.01))
    return Stall(
        start_s=start,
        duration_s=duration,
        thread="loop-worker" if worker else "MainThread",
        thread_id=WORKER_TID if worker else MAIN_TID,
        loop=WORKER_LOOP if worker else MAIN_LOOP,
        task=task,
        coro=coro,
        callback=None if task else "<TimerHandle when=1234.5 refresh_cache()>",
        culprit=culprit,
        call=call,
        kind=kind,  # type: ignore[arg-type]
        stack=stack,
        samples=(
            SampleCount(culprit, samples - samples // 10),
            SampleCount(inner[-1], samples // 10),
        ),
        sample_count=samples,
        ongoing=ongoing,
    )


FETCH_USER = Frame(f"{APP}/users.py", 42, "fetch_user", "resp = requests.get(f'{API}/users/{uid}')")
RENDER = Frame(
    f"{APP}/reports.py", 117, "render_invoice_pdf", "pdf = build_pdf(order, fonts=FONTS)"
)
HASH = Frame(f"{APP}/auth.py", 23, "check_password", "ok = bcrypt.checkpw(pw, stored)")
SLEEP = Frame(f"{APP}/retry.py", 15, "backoff", "time.sleep(delay)")
LOCK = Frame(f"{APP}/cache.py", 61, "refresh_cache", "with self._lock:")

_REQUESTS = (
    Frame(
        f"{SITE}/requests/api.py", 73, "get", 'return request("get", url, params=params, **kwargs)'
    ),
    Frame(f"{SITE}/requests/sessions.py", 703, "send", "r = adapter.send(request, **kwargs)"),
    Frame(
        f"{SITE}/urllib3/connectionpool.py", 537, "_make_request", "response = conn.getresponse()"
    ),
    Frame("/usr/lib/python3.11/socket.py", 706, "readinto", "return self._sock.recv_into(b)"),
)
_PDF = (
    Frame(f"{APP}/pdf.py", 210, "build_pdf", "for page in layout(order):"),
    Frame(f"{APP}/pdf.py", 154, "layout", "glyphs = shape_text(line, font)"),
)
_BCRYPT = (
    Frame(f"{SITE}/bcrypt/__init__.py", 91, "checkpw", "return hashpw(password, hashed_password)"),
)
_SLEEP = (Frame("<built-in>", 0, "time.sleep", None),)
_LOCK = (Frame("/usr/lib/python3.11/threading.py", 320, "acquire", "waiter.acquire()"),)


def _lag_series(duration: float, stalls: list[Stall], seed: int) -> list[tuple[float, float]]:
    """A heartbeat every 100 ms: small noise, and a spike right after each stall."""
    rng = random.Random(seed)
    points: list[tuple[float, float]] = []
    t = 0.0
    while t <= duration:
        lag = 0.0008 + rng.random() * 0.002 + 0.0015 * (1 + math.sin(t / 3))
        for s in stalls:
            if s.start_s <= t <= s.start_s + s.duration_s + 0.1:
                lag = max(lag, min(t - s.start_s, s.duration_s))
        points.append((round(t, 3), round(lag, 6)))
        t += 0.1
    return points


def realistic_report() -> Report:
    """A 30 s run of a web service: two loops, 14 stalls incl. a hang still going on."""
    main = [
        _stall(
            1.8,
            0.42,
            culprit=FETCH_USER,
            call="socket.socket.recv_into",
            kind="wait",
            inner=_REQUESTS,
        ),
        _stall(
            4.1,
            0.35,
            culprit=FETCH_USER,
            call="socket.socket.recv_into",
            kind="wait",
            inner=_REQUESTS,
        ),
        _stall(
            6.0, 2.6, culprit=RENDER, call="pdf.shape_text", kind="cpu", inner=_PDF, coro="invoice"
        ),
        _stall(
            10.2, 0.18, culprit=HASH, call="bcrypt.hashpw", kind="cpu", inner=_BCRYPT, coro="login"
        ),
        _stall(
            11.9, 0.21, culprit=HASH, call="bcrypt.hashpw", kind="cpu", inner=_BCRYPT, coro="login"
        ),
        _stall(
            13.4,
            0.75,
            culprit=FETCH_USER,
            call="socket.socket.recv_into",
            kind="wait",
            inner=_REQUESTS,
        ),
        _stall(
            16.0,
            1.1,
            culprit=SLEEP,
            call="time.sleep",
            kind="wait",
            inner=_SLEEP,
            coro="sync_stock",
        ),
        _stall(
            19.5, 0.13, culprit=HASH, call="bcrypt.hashpw", kind="cpu", inner=_BCRYPT, coro="login"
        ),
        _stall(
            22.3, 4.2, culprit=RENDER, call="pdf.shape_text", kind="cpu", inner=_PDF, coro="invoice"
        ),
        _stall(
            27.8,
            0.3,
            culprit=FETCH_USER,
            call="socket.socket.recv_into",
            kind="wait",
            inner=_REQUESTS,
        ),
    ]
    worker = [
        _stall(
            3.0,
            0.55,
            culprit=SLEEP,
            call="time.sleep",
            kind="wait",
            inner=_SLEEP,
            worker=True,
            coro="poll_queue",
        ),
        _stall(
            8.7,
            0.16,
            culprit=SLEEP,
            call="time.sleep",
            kind="wait",
            inner=_SLEEP,
            worker=True,
            coro="poll_queue",
        ),
        _stall(
            14.2,
            1.4,
            culprit=LOCK,
            call="_thread.lock.acquire",
            kind="wait",
            inner=_LOCK,
            worker=True,
            task=None,
            coro=None,
        ),
        _stall(
            24.5,
            5.5,
            culprit=LOCK,
            call="_thread.lock.acquire",
            kind="wait",
            inner=_LOCK,
            worker=True,
            task=None,
            coro=None,
            ongoing=True,
        ),
    ]
    return Report(
        threshold_s=0.1,
        stalls=sorted(main + worker, key=lambda s: s.start_s),
        loops=[
            LoopInfo(MAIN_LOOP, "MainThread", MAIN_TID, "asyncio", _lag_series(30.0, main, 1)),
            LoopInfo(
                WORKER_LOOP, "loop-worker", WORKER_TID, "uvloop", _lag_series(30.0, worker, 2)
            ),
        ],
        started_at=1_764_115_200.0,
        duration_s=30.0,
        argv=["app/main.py", "--port", "8000"],
    )


def empty_report() -> Report:
    """A run with no stall: the loop stayed responsive."""
    loop = LoopInfo(
        MAIN_LOOP, "MainThread", MAIN_TID, "asyncio", [(t / 10, 0.001) for t in range(50)]
    )
    return Report(
        threshold_s=0.1, loops=[loop], started_at=1_764_115_200.0, duration_s=5.0, argv=["idle.py"]
    )


def many_stalls_report(n: int = 1000) -> Report:
    """``n`` short stalls over ten minutes in one loop, from a dozen culprits."""
    rng = random.Random(7)
    culprits = [
        Frame(f"{APP}/handlers.py", 100 + i, f"handler_{i}", f"work({i})") for i in range(12)
    ]
    stalls, t = [], 0.5
    for i in range(n):
        duration = 0.1 + rng.expovariate(4.0)
        culprit = culprits[i % len(culprits)]
        stalls.append(
            _stall(
                t,
                duration,
                culprit=culprit,
                call="time.sleep",
                kind="wait" if i % 3 else "cpu",
                inner=_SLEEP,
            )
        )
        t += duration + 0.05 + rng.random() * 0.4
    loop = LoopInfo(MAIN_LOOP, "MainThread", MAIN_TID, "asyncio", _lag_series(t, stalls, 3))
    return Report(
        threshold_s=0.1,
        stalls=stalls,
        loops=[loop],
        started_at=1_764_115_200.0,
        duration_s=t,
        argv=["busy.py"],
    )


HOSTILE = "</script><script>alert('x')</script><img src=x onerror=alert(1)>&amp;\u2028"


def hostile_report() -> Report:
    """Strings that break naive HTML or JSON embedding, in every field a page shows."""
    culprit = Frame(f"/tmp/{HOSTILE}.py", 3, f"fn_{HOSTILE}", f"x = '{HOSTILE}'")
    stall = Stall(
        start_s=0.5,
        duration_s=0.4,
        thread=f"thread {HOSTILE}",
        thread_id=5,
        loop=f"loop {HOSTILE}",
        task=f"task {HOSTILE}",
        coro=f"coro {HOSTILE}",
        culprit=culprit,
        call=f"call {HOSTILE}",
        kind="wait",
        stack=(Frame("/tmp/a.py", 1, "<module>"), culprit),
        sample_count=4,
    )
    loop = LoopInfo(
        f"loop {HOSTILE}", f"thread {HOSTILE}", 5, "asyncio", [(0.0, 0.001), (1.0, 0.4)]
    )
    return Report(threshold_s=0.1, stalls=[stall], loops=[loop], duration_s=2.0, argv=[HOSTILE])


def watched_report() -> Report:
    """A real report: ``unstall.watch()`` over two loops in two threads, one stall in each."""
    import asyncio
    import threading
    import time

    import unstall

    async def main_loop() -> None:
        await asyncio.sleep(0.2)
        time.sleep(0.3)  # the main loop's stall
        await asyncio.sleep(0.2)

    async def worker_loop() -> None:
        await asyncio.sleep(0.5)  # lets the watcher find this loop first
        time.sleep(0.3)  # the worker loop's stall
        await asyncio.sleep(0.2)

    watcher = unstall.watch(threshold=0.1, log=False)
    try:
        worker = threading.Thread(target=asyncio.run, args=(worker_loop(),), name="worker")
        worker.start()
        asyncio.run(main_loop())
        worker.join()
    finally:
        watcher.stop()
    return watcher.report()
