"""Watch a small service really stall, then save its report, HTML timeline, trace and screenshot.

Two event loops in two threads do real work with real blocking calls in it: a socket
read from a slow backend, password hashing, a big JSON dump, ``time.sleep`` and a lock
held by another thread. ``unstall.watch()`` records it all; this script writes
``report.json``, ``timeline.html`` and ``trace.json`` to a folder and, when Chromium is
installed, a screenshot of the timeline (the README's ``docs/timeline.png``)::

    python examples/make_timeline_screenshot.py [OUT_DIR] [--png docs/timeline.png]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import unstall
from unstall._report.html import write_html
from unstall._report.trace import write_trace

CACHE_LOCK = threading.Lock()


def slow_backend() -> tuple[socket.socket, int]:
    """A TCP server that answers after 180, 350 or 600 ms, like a slow upstream API."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        delays = iter([0.18, 0.35, 0.6] * 10)
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1024)
                time.sleep(next(delays))
                conn.sendall(b'{"id": 7, "name": "Ada"}')

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def fetch_user(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /users/7")
        return conn.recv(1024)  # blocks the loop until the backend answers


def check_password(password: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, b"salt", 2_000_000)


def export_orders() -> str:
    orders = [{"id": i, "items": list(range(40)), "total": i * 1.5} for i in range(150_000)]
    return json.dumps(orders)


async def handle_request(port: int) -> None:
    fetch_user(port)
    await asyncio.sleep(0)


async def web_service(port: int) -> None:
    """The main loop: requests, logins and an export, with healthy traffic in between."""
    for step in range(60):
        await asyncio.sleep(0.05)
        if step in (8, 30, 44):
            await asyncio.create_task(handle_request(port), name=f"GET /users/{step}")
        elif step in (18, 36):
            check_password(b"hunter2")
        elif step == 54:
            export_orders()


def retry_backoff() -> None:
    time.sleep(1.2)  # a sync client's retry back-off


def refresh_cache() -> None:
    with CACHE_LOCK:  # held by another thread for a while
        pass


async def worker_loop() -> None:
    """A second loop in its own thread: polls a queue and refreshes a shared cache."""
    for step in range(34):
        await asyncio.sleep(0.05)
        if step == 10:
            retry_backoff()
        elif step == 16:
            held = threading.Event()
            threading.Thread(target=hold_lock, args=(held,), daemon=True).start()
            held.wait()
            refresh_cache()


def hold_lock(held: threading.Event) -> None:
    with CACHE_LOCK:
        held.set()
        time.sleep(0.9)


def run() -> unstall.Report:
    server, port = slow_backend()
    watcher = unstall.watch(threshold=0.1, log=False)  # every loop, in every thread
    try:
        worker = threading.Thread(target=asyncio.run, args=(worker_loop(),), name="cache-worker")
        worker.start()
        asyncio.run(web_service(port))
        worker.join()
    finally:
        watcher.stop()
        server.close()
    report = watcher.report()
    report.argv = ["shop_service.py", "--port", "8000"]
    return report


def screenshot(html: Path, png: Path) -> bool:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium not found: no screenshot", file=sys.stderr)
        return False
    profile = html.parent / ".chromium-profile"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    cmd += [f"--user-data-dir={profile}", f"--screenshot={png}", "--window-size=1280,960"]
    subprocess.run([*cmd, html.as_uri() + "#stall=worst"], check=True, capture_output=True)
    shutil.rmtree(profile, ignore_errors=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="timeline-example", help="output folder")
    parser.add_argument("--png", help="screenshot path (default: OUT/timeline.png)")
    opts = parser.parse_args()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run()
    report.write(out / "report.json")
    write_html(report, out / "timeline.html")
    write_trace(report, out / "trace.json")
    print(f"{len(report.stalls)} stalls in {report.duration_s:.1f} s; wrote {out}/")
    png = Path(opts.png) if opts.png else out / "timeline.png"
    if screenshot(out / "timeline.html", png):
        print(f"screenshot: {png}")


if __name__ == "__main__":
    main()
