"""Strict mode's severity (issue 19): what a call can cost decides how it is reported.

Network, subprocess, sleep and lock calls fail; cheap metadata calls on local files and
small bounded reads are timed, and within the budget are one warning per call site.
"""

from __future__ import annotations

import asyncio
import http.server
import inspect
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import unstall
from unstall._strict import allow as _allow


def on_loop(fn: Callable[[], Any], **options: Any) -> tuple[Any, list[warnings.WarningMessage]]:
    """Run ``fn`` on a running loop's thread inside strict(**options); what it warned."""

    async def main() -> Any:
        with unstall.strict(**options):
            return fn()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = asyncio.run(main())
    mine = [w for w in caught if issubclass(w.category, unstall.BlockingCallWarning)]
    return result, mine


@pytest.fixture
def local_server() -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_cached_source_lookup_on_the_loop_is_not_reported() -> None:
    def lookup() -> str | None:
        return inspect.getsourcefile(on_loop)  # stats the file: the stdlib caches the rest

    found, warned = on_loop(lookup)
    assert found == __file__
    assert warned == []


def test_a_network_call_on_the_loop_fails(local_server: str) -> None:
    with pytest.raises(unstall.BlockingCallError) as info:
        on_loop(lambda: requests.get(local_server, timeout=5))
    assert info.value.call == "requests.Session.request"
    assert info.value.file == __file__


def test_a_cheap_stat_warns_once_per_call_site(tmp_path: Path) -> None:
    def stats() -> None:
        for _ in range(3):
            os.stat(tmp_path)  # site A, three times
        os.path.exists(tmp_path / "nope")  # site B

    # A budget no stat exceeds, even on a loaded machine: the per-site warning is the claim.
    _, warned = on_loop(stats, budget=1.0)
    assert len(warned) == 2
    assert "reported once per call site" in str(warned[0].message)
    assert {w.lineno for w in warned} == {
        stats.__code__.co_firstlineno + 2,
        stats.__code__.co_firstlineno + 3,
    }


def test_a_stat_over_the_budget_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_stat = os.stat

    def slow_stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        time.sleep(0.005)  # a stat on a slow network mount
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", slow_stat)  # wrapped by strict mode as os.stat is
    with pytest.raises(unstall.BlockingCallError, match=r"over the 1 ms budget"):
        on_loop(lambda: os.stat(tmp_path))


def test_the_budget_and_level_all_are_honoured(tmp_path: Path) -> None:
    with pytest.raises(unstall.BlockingCallError):
        on_loop(lambda: os.stat(tmp_path), level="all")
    _, warned = on_loop(lambda: os.stat(tmp_path), budget=10.0)
    assert len(warned) == 1


def test_project_only_leaves_out_what_dependencies_do(
    local_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed package that blocks on its own, with no project frame on the stack.
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "napdep.py").write_text("import time\n\ndef nap():\n    time.sleep(0.001)\n")
    monkeypatch.syspath_prepend(str(site))
    import napdep

    def warned(only: str) -> list[str]:
        loop = asyncio.new_event_loop()
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                unstall.strict(
                    action="warn",
                    only=only,  # type: ignore[arg-type]
                ),
            ):
                warnings.simplefilter("always")
                loop.call_soon(napdep.nap)  # the callback's only frame outside asyncio
                loop.run_until_complete(asyncio.sleep(0.01))
        finally:
            loop.close()
        return [w.filename for w in caught if w.category is unstall.BlockingCallWarning]

    assert warned("all") == [napdep.__file__]
    assert warned("project") == []
    # The culprit of requests.get here is this file's line: the project's call.
    with pytest.raises(unstall.BlockingCallError) as info:
        on_loop(lambda: requests.get(local_server, timeout=5), only="project")
    assert info.value.file == __file__


@pytest.mark.parametrize(
    "options",
    [{"level": "most"}, {"only": "mine"}, {"budget": 0}, {"budget": -1}, {"budget": "1ms"}],
)
def test_bad_severity_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        unstall.strict(**options)


def test_libraries_declare_allow_entries_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "slowlib-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: slowlib\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[unstall.allow]\nslowlib = slowlib:allowed\n")
    (tmp_path / "slowlib.py").write_text(
        "import time\n\n"
        "def allowed():\n    return ['slowlib.warm_up']\n\n"
        "def warm_up():\n    time.sleep(0.002)  # once per process, by design\n\n"
        "def other():\n    time.sleep(0.002)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_allow, "_declared", None)
    import slowlib

    try:
        on_loop(slowlib.warm_up)
        with pytest.raises(unstall.BlockingCallError):
            on_loop(slowlib.other)
    finally:
        sys.modules.pop("slowlib", None)
        _allow._declared = None
