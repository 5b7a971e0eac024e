"""Strict mode: every covered blocking call is caught on a loop thread and only there."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import queue
import socket
import sqlite3
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import unstall
from unstall._exceptions import BlockingCallWarning
from unstall._strict import api
from unstall._strict.api import covered_calls
from unstall._strict.config import _cached


@dataclass
class Env:
    tmp: Path
    cleanup: list[Callable[[], Any]]

    def later(self, fn: Callable[[], Any]) -> None:
        self.cleanup.append(fn)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, [])
    yield e
    for fn in reversed(e.cleanup):
        fn()


def in_loop(fn: Callable[[], Any], **options: Any) -> Any:
    """Run ``fn`` synchronously on a running loop's thread, inside strict(**options)."""

    async def main() -> Any:
        with unstall.strict(**options):
            return fn()

    return asyncio.run(main())


def in_thread(fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` in a plain thread while strict mode is on; return what it raised."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            raised.append(exc)

    async def main() -> None:
        with unstall.strict():
            t = threading.Thread(target=target)
            t.start()
            await asyncio.to_thread(t.join)

    asyncio.run(main())
    return raised[0] if raised else None


def in_worker(fn: Callable[[], Any]) -> BaseException | None:
    """Run ``fn`` offloaded with asyncio.to_thread from a strict loop."""

    async def main() -> BaseException | None:
        with unstall.strict():
            try:
                await asyncio.to_thread(fn)
            except BaseException as exc:
                return exc
        return None

    return asyncio.run(main())


# --- the catalogue: one factory per covered call -----------------------------------------


def _file(env: Env) -> Path:
    path = env.tmp / "data.txt"
    path.write_text("hello\n")
    return path


def _pipe(env: Env) -> tuple[int, int]:
    r, w = os.pipe()
    env.later(lambda: (os.close(r), os.close(w)))
    os.write(w, b"x" * 10)
    return r, w


def _pair(env: Env) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    env.later(a.close)
    env.later(b.close)
    b.sendall(b"ping")
    return a, b


def _server(env: Env) -> socket.socket:
    srv = socket.create_server(("127.0.0.1", 0))
    env.later(srv.close)
    return srv


def _held_lock(env: Env) -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    env.later(lock.release)
    return lock


def _opened(env: Env, mode: str) -> Any:
    f = open(_file(env), mode)  # outside the loop on purpose
    env.later(f.close)
    return f


def _sqlite(env: Env) -> sqlite3.Connection:
    conn = sqlite3.connect(env.tmp / "db.sqlite", check_same_thread=False)
    env.later(conn.close)
    return conn


def _alive_thread(env: Env) -> threading.Thread:
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    env.later(lambda: (stop.set(), t.join()))
    return t


def _tls_socket(env: Env) -> ssl.SSLSocket:
    a, b = socket.socketpair()
    env.later(a.close)
    env.later(b.close)
    b.close()  # the handshake fails fast off the loop instead of waiting for a peer
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(a, do_handshake_on_connect=False)
    env.later(s.close)
    return s


def _process(env: Env, **kwargs: Any) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(PY, **kwargs)
    env.later(lambda: proc.poll() is None and proc.communicate())
    return proc


def _connect(env: Env) -> Callable[[], None]:
    address = _server(env).getsockname()

    def connect() -> None:
        with socket.socket() as s:
            s.connect(address)

    return connect


def _condition_wait() -> None:
    cond = threading.Condition()
    with cond:
        cond.wait(0.01)


Factory = Callable[[Env], Callable[[], Any]]
PY = [sys.executable, "-c", "pass"]

CASES: dict[str, tuple[str, Factory]] = {
    "time.sleep": ("time.sleep", lambda e: lambda: time.sleep(0.005)),
    "open": ("open", lambda e: lambda: open(_file(e)).close()),
    "Path.write_text": ("open", lambda e: lambda: (e.tmp / "w.txt").write_text("x")),
    "Path.read_text": ("open", lambda e: lambda: _file(e).read_text()),
    "TextIOWrapper.read": ("io.TextIOWrapper.read", lambda e: lambda f=_opened(e, "r"): f.read()),
    "TextIOWrapper.write": (
        "io.TextIOWrapper.write",
        lambda e: lambda f=_opened(e, "a"): f.write("x"),
    ),
    "BufferedReader.read": (
        "io.BufferedReader.read",
        lambda e: lambda f=_opened(e, "rb"): f.read(),
    ),
    "BufferedWriter.write": (
        "io.BufferedWriter.write",
        lambda e: lambda f=_opened(e, "ab"): f.write(b"x"),
    ),
    "os.read": ("os.read", lambda e: lambda p=_pipe(e): os.read(p[0], 1)),
    "os.write": ("os.write", lambda e: lambda p=_pipe(e): os.write(p[1], b"y")),
    "os.stat": ("os.stat", lambda e: lambda: os.stat(e.tmp)),
    "os.path.exists": ("os.stat", lambda e: lambda: os.path.exists(e.tmp / "nope")),
    "os.listdir": ("os.listdir", lambda e: lambda: os.listdir(e.tmp)),
    "os.scandir": ("os.scandir", lambda e: lambda: list(os.scandir(e.tmp))),
    "Path.iterdir": ("os.", lambda e: lambda: list(e.tmp.iterdir())),
    "os.remove": ("os.remove", lambda e: lambda p=_file(e): os.remove(p)),
    "socket.connect": ("socket.socket.connect", _connect),
    "socket.recv": ("socket.socket.recv", lambda e: lambda p=_pair(e): p[0].recv(4)),
    "socket.sendall": ("socket.socket.sendall", lambda e: lambda p=_pair(e): p[0].sendall(b"x")),
    "socket.accept": (
        "socket.socket.accept",
        lambda e: lambda srv=_server(e): srv.settimeout(0.01) or srv.accept(),
    ),
    "getaddrinfo": ("socket.getaddrinfo", lambda e: lambda: socket.getaddrinfo("localhost", 80)),
    "gethostbyname": ("socket.gethostbyname", lambda e: lambda: socket.gethostbyname("localhost")),
    "ssl.do_handshake": (
        "ssl.SSLSocket.do_handshake",
        lambda e: lambda s=_tls_socket(e): s.do_handshake(),
    ),
    "subprocess.run": ("subprocess.run", lambda e: lambda: subprocess.run(PY, check=True)),
    "subprocess.check_output": (
        "subprocess.check_output",
        lambda e: lambda: subprocess.check_output(PY),
    ),
    "Popen.wait": ("subprocess.Popen.wait", lambda e: lambda p=_process(e): p.wait()),
    "Popen.communicate": (
        "subprocess.Popen.communicate",
        lambda e: lambda p=_process(e, stdout=subprocess.PIPE): p.communicate(),
    ),
    "Popen": ("subprocess.Popen", lambda e: lambda: subprocess.Popen(PY).wait()),
    "sqlite3.connect": ("sqlite3.connect", lambda e: lambda: sqlite3.connect(":memory:").close()),
    "sqlite3.execute": (
        "sqlite3.Connection.execute",
        lambda e: lambda c=_sqlite(e): c.execute("select 1"),
    ),
    "sqlite3.commit": ("sqlite3.Connection.commit", lambda e: lambda c=_sqlite(e): c.commit()),
    "sqlite3.Cursor.execute": (
        "sqlite3.Cursor.execute",
        lambda e: lambda c=_sqlite(e): c.cursor().execute("select 1"),
    ),
    "Lock.acquire": (
        "threading.Lock.acquire",
        lambda e: lambda lock=_held_lock(e): lock.acquire(timeout=0.01),
    ),
    "with lock": ("threading.Lock.acquire", lambda e: lambda lock=_held_lock(e): lock.__enter__()),
    "Event.wait": ("threading.Event.wait", lambda e: lambda: threading.Event().wait(0.01)),
    "Condition.wait": ("threading.Condition.wait", lambda e: _condition_wait),
    "Semaphore.acquire": (
        "threading.Semaphore.acquire",
        lambda e: lambda: threading.Semaphore(0).acquire(timeout=0.01),
    ),
    "Thread.join": ("threading.Thread.join", lambda e: lambda t=_alive_thread(e): t.join(0.01)),
    "Queue.get": ("queue.Queue.get", lambda e: lambda: queue.Queue().get(timeout=0.01)),
    "Queue.put": (
        "queue.Queue.put",
        lambda e: lambda: (q := queue.Queue(1)).put(1) or q.put(2, timeout=0.01),
    ),
    "SimpleQueue.get": (
        "queue.SimpleQueue.get",
        lambda e: lambda: queue.SimpleQueue().get(timeout=0.01),
    ),
    "Future.result": (
        "concurrent.futures.Future.result",
        lambda e: lambda: concurrent.futures.Future().result(timeout=0.01),
    ),
    "input": ("builtins.input", lambda e: lambda: input()),
}


# Calls that would wait for ever off the loop; their flagged case is tested.
NOT_OFF_LOOP = {
    "input": "input() would read the test runner's stdin",
    "with lock": "entering a held lock off the loop waits for ever (Lock.acquire covers it)",
}


@pytest.mark.parametrize("case", list(CASES))
def test_flagged_on_a_loop_thread_at_the_caller_line(case: str, env: Env) -> None:
    call, factory = CASES[case]
    fn = factory(env)
    with pytest.raises(unstall.BlockingCallError) as info:
        in_loop(fn, level="all")  # the whole catalogue, cheap calls included
    err = info.value
    assert err.call.startswith(call)
    assert err.file == __file__, err.file
    assert err.line > 0
    assert f"{__file__}:{err.line}" in str(err)
    assert err.call in str(err)
    assert "Fix:" in str(err)
    assert isinstance(err, RuntimeError)


@pytest.mark.parametrize("case", [c for c in CASES if c not in NOT_OFF_LOOP])
def test_fine_in_plain_and_worker_threads(case: str, env: Env) -> None:
    factory = CASES[case][1]
    for runner in (in_thread, in_worker):
        raised = runner(factory(env))
        assert not isinstance(raised, unstall.BlockingCallError), (runner.__name__, raised)


@pytest.mark.parametrize("case", ["time.sleep", "open", "os.read", "socket.recv", "Lock.acquire"])
def test_not_flagged_without_strict(case: str, env: Env) -> None:
    fn = CASES[case][1](env)

    async def main() -> None:
        try:
            fn()
        except TimeoutError:
            pass

    asyncio.run(main())


# --- what must never be flagged -------------------------------------------------------


def test_non_blocking_forms_pass(env: Env) -> None:
    r, w = os.pipe()
    env.later(lambda: (os.close(r), os.close(w)))
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    a, b = socket.socketpair()
    env.later(a.close)
    env.later(b.close)
    a.setblocking(False)
    event = threading.Event()
    event.set()
    q: queue.Queue[int] = queue.Queue()
    q.put(1)
    done: concurrent.futures.Future[int] = concurrent.futures.Future()
    done.set_result(3)

    def calls() -> None:
        time.sleep(0)
        os.write(w, b"x")
        assert os.read(r, 1) == b"x"
        a.send(b"x")
        with pytest.raises(BlockingIOError):
            a.recv(1)
        lock = threading.Lock()
        with lock:  # uncontended: never waits
            pass
        assert lock.acquire(timeout=1)
        lock.release()
        assert event.wait()
        assert q.get() == 1
        assert done.result() == 3
        print("stdout is fine")
        sys.stderr.write("stderr is fine\n")
        logging.getLogger("test").warning("logging to stderr is fine")
        io.StringIO().write("memory is fine")

    in_loop(calls)


async def _asyncio_workload(tmp: Path) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("localhost", port)
    writer.write(b"hi\n")
    assert await reader.readline() == b"hi\n"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    proc = await asyncio.create_subprocess_exec(*PY, stdout=asyncio.subprocess.PIPE)
    await proc.communicate()
    assert await asyncio.get_running_loop().getaddrinfo("localhost", 80)
    await asyncio.to_thread(time.sleep, 0.001)
    assert await unstall.to_thread((tmp / "t").write_text, "x") == 1
    assert await asyncio.get_running_loop().run_in_executor(None, sum, [1, 2]) == 3
    asyncio.get_running_loop().call_soon_threadsafe(lambda: None)
    await asyncio.sleep(0.01)


def test_asyncio_and_unstall_machinery_is_never_flagged(tmp_path: Path) -> None:
    async def main() -> None:
        with unstall.strict():
            await _asyncio_workload(tmp_path)

    asyncio.run(main())


def test_uvloop_machinery_is_never_flagged_and_blocking_is(tmp_path: Path) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        with unstall.strict():
            await _asyncio_workload(tmp_path)
            with pytest.raises(unstall.BlockingCallError):
                time.sleep(0.001)

    uvloop.run(main())


# --- allow-lists, actions, the three ways to switch it on ------------------------------


def _blocking_helper() -> None:
    time.sleep(0.001)


@pytest.mark.parametrize(
    "entry",
    [
        "time.sleep",
        "time",
        "test_strict",
        "test_strict._blocking_helper",
        "*/test_strict.py",
        "strict/test_strict.py",
        "test_*.py",
    ],
)
def test_allow_list_entries(entry: str) -> None:
    in_loop(_blocking_helper, allow=[entry])
    with pytest.raises(unstall.BlockingCallError):
        in_loop(_blocking_helper, allow=["some.other.module", "*/elsewhere.py"])


def test_allow_list_from_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.unstall]\nstrict_allow = ["time.sleep"]\n')
    monkeypatch.chdir(tmp_path)
    _cached.cache_clear()
    try:
        in_loop(_blocking_helper)
    finally:
        monkeypatch.undo()
        _cached.cache_clear()
    with pytest.raises(unstall.BlockingCallError):
        in_loop(_blocking_helper)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="action must be one of"):
        unstall.strict(action="explode")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of strings"):
        unstall.strict(allow="time.sleep")
    with pytest.raises(ValueError, match="empty"):
        unstall.strict(allow=[" "])
    with pytest.raises(TypeError, match="decorates a function"):
        unstall.strict()(3)  # type: ignore[call-overload]

    async def agen() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator function"):
        unstall.strict()(agen)


def test_warn_action_points_at_the_caller() -> None:
    with pytest.warns(BlockingCallWarning, match="time.sleep") as record:
        in_loop(_blocking_helper, action="warn")
    assert record[0].filename == __file__
    assert record[0].lineno == _blocking_helper.__code__.co_firstlineno + 1


def test_log_action(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="unstall.strict"):
        in_loop(_blocking_helper, action="log")
    assert any("time.sleep" in r.getMessage() for r in caplog.records)


def test_decorator_on_async_and_sync_functions() -> None:
    @unstall.strict()
    async def handler() -> None:
        time.sleep(0.001)

    with pytest.raises(unstall.BlockingCallError):
        asyncio.run(handler())

    @unstall.strict()
    def runs_a_loop() -> None:
        async def inner() -> None:
            time.sleep(0.001)

        asyncio.run(inner())

    with pytest.raises(unstall.BlockingCallError):
        runs_a_loop()
    assert handler.__name__ == "handler"


def test_scope_does_not_leak_to_other_threads_loops() -> None:
    async def other_loop() -> None:
        time.sleep(0.001)  # a plain thread does not inherit the scope's context

    async def main() -> None:
        with unstall.strict():
            t = threading.Thread(target=asyncio.run, args=(other_loop(),))
            t.start()
            await asyncio.to_thread(t.join)

    asyncio.run(main())


def test_scope_follows_the_context_into_to_thread() -> None:
    async def other_loop() -> None:
        time.sleep(0.001)

    async def main() -> None:
        with unstall.strict():
            await asyncio.to_thread(asyncio.run, other_loop())

    with pytest.raises(unstall.BlockingCallError):
        asyncio.run(main())


def test_install_is_process_wide_and_uninstall_restores() -> None:
    write = io.TextIOWrapper.write
    sleep = time.sleep
    uninstall = api.install(action="raise")
    try:
        assert io.TextIOWrapper.write is not write

        async def elsewhere() -> None:
            time.sleep(0.001)

        with pytest.raises(unstall.BlockingCallError):
            asyncio.run(elsewhere())
        # a loop in another thread is covered too
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with pytest.raises(unstall.BlockingCallError):
                pool.submit(asyncio.run, elsewhere()).result()
    finally:
        uninstall()
        uninstall()  # idempotent
    assert io.TextIOWrapper.write is write
    assert time.sleep is sleep
    assert "recv" not in vars(socket.socket)

    async def fine() -> None:
        time.sleep(0.001)

    asyncio.run(fine())


def test_innermost_scope_wins_over_install() -> None:
    uninstall = api.install(action="raise")
    try:
        with pytest.warns(BlockingCallWarning):
            in_loop(_blocking_helper, action="warn")
    finally:
        uninstall()


def test_swallowed_errors_still_reach_the_sink() -> None:
    seen: list[unstall.BlockingCallError] = []

    async def main() -> None:
        with unstall.strict(_sink=seen.append):
            try:
                time.sleep(0.001)
            except Exception:
                pass

    asyncio.run(main())
    assert [e.call for e in seen] == ["time.sleep"]


def test_third_party_clients_are_named(env: Env) -> None:
    pytest.importorskip("requests")
    pytest.importorskip("httpx")
    import httpx
    import requests
    import urllib3

    srv = _server(env)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/"
    for fn, call in [
        (lambda: requests.get(url, timeout=0.01), "requests.Session.request"),
        (lambda: httpx.Client().get(url, timeout=0.01), "httpx.Client.send"),
        (
            lambda: urllib3.PoolManager().request("GET", url, timeout=0.01),
            "urllib3.PoolManager.urlopen",
        ),
    ]:
        with pytest.raises(unstall.BlockingCallError) as info:
            in_loop(fn)
        assert info.value.call == call
        assert info.value.file == __file__


def test_error_survives_pickling() -> None:
    import pickle

    with pytest.raises(unstall.BlockingCallError) as info:
        in_loop(_blocking_helper)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (copy.call, copy.file, copy.line) == (info.value.call, info.value.file, info.value.line)


def test_catalogue_covers_the_peers_lists() -> None:
    names = set(covered_calls())
    # blockbuster's and aiocop's lists (see the table in docs/strict-mode.md), by our call names
    for call in [
        "time.sleep",
        "os.read",
        "os.write",
        "os.listdir",
        "os.scandir",
        "os.stat",
        "os.statvfs",
        "os.sendfile",
        "os.rename",
        "os.remove",
        "os.mkdir",
        "os.rmdir",
        "os.link",
        "os.symlink",
        "os.readlink",
        "os.access",
        "io.BufferedReader.read",
        "io.BufferedWriter.write",
        "io.BufferedRandom.read",
        "io.BufferedRandom.write",
        "io.TextIOWrapper.read",
        "io.TextIOWrapper.write",
        "socket.socket.connect",
        "socket.socket.accept",
        "socket.socket.send",
        "socket.socket.sendall",
        "socket.socket.sendto",
        "socket.socket.recv",
        "socket.socket.recv_into",
        "socket.socket.recvfrom",
        "socket.socket.recvfrom_into",
        "socket.socket.recvmsg",
        "socket.socket.connect_ex",
        "socket.socket.sendmsg",
        "ssl.SSLSocket.write",
        "ssl.SSLSocket.send",
        "ssl.SSLSocket.read",
        "ssl.SSLSocket.recv",
        "sqlite3.Cursor.execute",
        "sqlite3.Cursor.executemany",
        "sqlite3.Cursor.fetchall",
        "sqlite3.Connection.commit",
        "sqlite3.Connection.rollback",
        "sqlite3.connect",
        "threading.Lock.acquire",
        "builtins.input",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
        "open",
        "tempfile.mkstemp",
        "tempfile.mkdtemp",
        "os.walk",
        "os.fwalk",
        "glob.glob",
        "os.truncate",
        "shutil.copyfile",
        "shutil.copytree",
        "shutil.rmtree",
        "shutil.move",
        "fcntl.flock",
        "fcntl.lockf",
        "http.client.connect",
        "urllib.Request",
        "smtplib.connect",
        "subprocess.Popen",
        "os.system",
    ]:
        assert call in names, call


def test_a_real_server_under_strict_mode() -> None:
    httpx = pytest.importorskip("httpx")
    uvicorn = pytest.importorskip("uvicorn")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def fine(request: Any) -> PlainTextResponse:
        await asyncio.sleep(0.001)
        return PlainTextResponse("fine")

    async def blocks(request: Any) -> PlainTextResponse:
        time.sleep(0.002)
        return PlainTextResponse("never")

    app = Starlette(routes=[Route("/fine", fine), Route("/blocks", blocks)])
    seen: list[unstall.BlockingCallError] = []

    async def main() -> tuple[int, int]:
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        client = httpx.AsyncClient()  # its TLS setup reads files: made before strict mode
        with unstall.strict(_sink=seen.append):
            config = uvicorn.Config(app, log_level="critical", lifespan="off")
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            async with client:
                ok = await client.get(f"http://127.0.0.1:{port}/fine")
                bad = await client.get(f"http://127.0.0.1:{port}/blocks")
            server.should_exit = True
            await serving
        return ok.status_code, bad.status_code

    assert asyncio.run(main()) == (200, 500)
    assert [(e.call, e.line) for e in seen] == [("time.sleep", blocks.__code__.co_firstlineno + 1)]


def test_client_libraries_are_never_imported_by_strict_mode(env: Env) -> None:
    """Imported later, requests is still caught, inside it and reported at your line."""
    port = _server(env).getsockname()[1]
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        import unstall

        async def main():
            with unstall.strict():
                assert "requests" not in sys.modules and "httpx" not in sys.modules
                import requests
                try:
                    requests.get("http://127.0.0.1:{port}/", timeout=0.01)  # line 10
                except unstall.BlockingCallError as exc:
                    print(exc.call, exc.line)

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    call, line = out.stdout.split()
    # its first blocking call inside (reading ~/.netrc, DNS, connect), at the user's line
    assert call.startswith(("os.", "socket.", "open")), out.stdout
    assert line == "10", out


def test_a_stream_on_the_same_file_as_stderr_is_console_even_after_sys_stderr_is_swapped(
    tmp_path: Path,
) -> None:
    # What pytest's fd capture and click's CliRunner do together: descriptor 2 points to a
    # capture file, a handler holds a stream on that file, then sys.stderr is swapped.
    capture = open(tmp_path / "capture", "w+")  # closed below
    saved_fd = os.dup(2)
    os.dup2(capture.fileno(), 2)
    saved = sys.stderr
    sys.stderr = io.StringIO()

    async def main() -> None:
        with unstall.strict():
            capture.write("logged while sys.stderr is somebody else's\n")
            capture.flush()

    try:
        asyncio.run(main())
    finally:
        sys.stderr = saved
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        capture.close()


def test_a_file_is_reported_once_its_write_not_again_at_the_flush_on_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    opened = open(tmp_path / "out.txt", "w")  # opened off the loop

    async def main() -> None:
        with unstall.strict(action="log"), opened:
            opened.write("x" * 100)

    with caplog.at_level(logging.WARNING, logger="unstall.strict"):
        asyncio.run(main())
    reports = [r.getMessage().splitlines()[0] for r in caplog.records]
    assert len(reports) == 1, reports
    assert reports[0].startswith("blocking call io.TextIOWrapper.write(")
