"""One async test per blocking call (``test_block_*``, each should be caught) and per
harmless thing a test does (``test_fine_*``, each should pass). Run by ``compare.py``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import logging
import os
import queue
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.asyncio


@pytest.fixture
def listener():
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()
    server.close()


@pytest.fixture
def opened(tmp_path):
    with open(tmp_path / "pre.txt", "w") as f:
        yield f


async def test_block_time_sleep():
    time.sleep(0.001)


async def test_block_open_read(tmp_path):
    open(__file__).close()


async def test_block_path_write_text(tmp_path):
    Path(tmp_path, "a.txt").write_text("x")


async def test_block_write_to_a_file_opened_earlier(opened):
    opened.write("x")
    opened.flush()


async def test_block_os_stat():
    os.stat(__file__)


async def test_block_path_exists():
    Path(__file__).exists()


async def test_block_os_getcwd():
    os.getcwd()


async def test_block_os_path_abspath():
    os.path.abspath("relative")


async def test_block_os_listdir():
    os.listdir(".")


async def test_block_os_unlink(tmp_path):
    target = tmp_path / "gone"
    await asyncio.to_thread(target.write_text, "x")
    os.unlink(target)


async def test_block_shutil_copyfile(tmp_path):
    await asyncio.to_thread(Path(tmp_path, "a").write_text, "x")
    shutil.copyfile(tmp_path / "a", tmp_path / "b")


async def test_block_tempfile_mkstemp(tmp_path):
    fd, _ = tempfile.mkstemp(dir=tmp_path)
    await asyncio.to_thread(os.close, fd)


async def test_block_py_path_tmpdir_write(tmpdir):
    tmpdir.join("a.txt").write("x")


async def test_block_getaddrinfo():
    socket.getaddrinfo("localhost", 80)


async def test_block_socket_connect(listener):
    sock = socket.socket()
    try:
        sock.connect(listener)
    finally:
        sock.close()


async def test_block_subprocess_run():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


async def test_block_sqlite():
    sqlite3.connect(":memory:").execute("select 1")


async def test_block_lock_held_elsewhere():
    lock = threading.Lock()
    holder = threading.Thread(target=lambda: (lock.acquire(), time.sleep(0.05), lock.release()))
    holder.start()
    await asyncio.sleep(0.01)
    if lock.acquire(timeout=1):
        lock.release()
    holder.join()


async def test_block_event_wait():
    threading.Event().wait(0.001)


async def test_block_queue_get():
    with pytest.raises(queue.Empty):
        queue.Queue().get(timeout=0.001)


async def test_block_future_result():
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(time.sleep, 0.01).result()


async def test_fine_print():
    print("captured by pytest")


async def test_fine_logging_while_stdout_is_swapped():
    handler = logging.StreamHandler(sys.stderr)
    log = logging.getLogger("probe")
    log.addHandler(handler)
    log.propagate = False
    saved = sys.stdout, sys.stderr
    sys.stdout = io.TextIOWrapper(io.BytesIO())
    sys.stderr = io.TextIOWrapper(io.BytesIO())
    try:
        log.warning("while swapped")
        swapped = sys.stderr
    finally:
        sys.stdout, sys.stderr = saved
        log.removeHandler(handler)
    swapped.seek(0)
    assert "Logging error" not in swapped.read()


async def test_fine_offloaded(tmp_path):
    await asyncio.to_thread(time.sleep, 0.001)
    await asyncio.to_thread(Path(tmp_path, "a.txt").write_text, "x")


async def test_fine_asyncio_streams(listener):
    _, writer = await asyncio.open_connection(*listener)
    writer.close()
    await writer.wait_closed()


async def test_fine_first_import():
    import xml.dom.minidom  # noqa: F401


async def test_fine_assertion_rewriting():
    assert [1, 2] == [1, 2]
