"""The helpers every output shares: the duration format, the path shortener, the atomic write."""

from __future__ import annotations

import os
import stat
import sysconfig
from pathlib import Path

import pytest

from unstall._report.format import format_duration, short_path, write_atomic

# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.000 s"),
        (0.005, "0.005 s"),  # a 5 ms threshold is not shown as 0.01 s
        (0.05, "0.050 s"),
        (0.0994, "0.099 s"),
        (0.0996, "0.10 s"),  # rounds up into the two-decimal form, not "0.100 s"
        (0.1, "0.10 s"),
        (0.25, "0.25 s"),
        (1.0, "1.00 s"),
        (3.1, "3.10 s"),
        (59.99, "59.99 s"),
        (59.996, "1 min 00 s"),  # rounds up into minutes, never "60.00 s"
        (60.0, "1 min 00 s"),
        (62.5, "1 min 03 s"),  # halves round up, as the page's script rounds them
        (65.0, "1 min 05 s"),
        (3599.4, "59 min 59 s"),
        (3599.6, "1 h 00 min"),
        (3600.0, "1 h 00 min"),
        (3725.0, "1 h 02 min"),
        (7199.0, "2 h 00 min"),
    ],
)
def test_durations_read_the_same_everywhere(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --- paths ---------------------------------------------------------------------------------


def test_a_file_under_cwd_is_shown_relative_to_it(tmp_path: Path) -> None:
    inside = str(tmp_path / "pkg" / "mod.py")
    assert short_path(inside, str(tmp_path)) == os.path.join("pkg", "mod.py")


def test_the_current_directory_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert short_path(str(tmp_path / "app.py")) == "app.py"


def test_an_installed_package_is_shown_from_the_package_on(tmp_path: Path) -> None:
    venv = tmp_path / ".venv" / "lib" / "python3.12" / "site-packages" / "httpx" / "_client.py"
    # from the package on even inside cwd: a virtualenv's path says nothing useful
    assert short_path(str(venv), str(tmp_path)) == "httpx/_client.py"
    debian = "/usr/lib/python3/dist-packages/requests/api.py"
    assert short_path(debian, str(tmp_path)) == "requests/api.py"


def test_a_standard_library_file_is_shown_from_its_module_on(tmp_path: Path) -> None:
    events = os.path.join(sysconfig.get_paths()["stdlib"], "asyncio", "events.py")
    assert short_path(events, str(tmp_path)) == os.path.join("asyncio", "events.py")


def test_a_file_under_home_starts_with_a_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    path = str(home / "proj" / "app.py")
    assert short_path(path, str(tmp_path / "elsewhere")) == os.path.join("~", "proj", "app.py")


def test_anything_else_is_left_as_it_is(tmp_path: Path) -> None:
    assert short_path("/somewhere/else/mod.py", str(tmp_path)) == "/somewhere/else/mod.py"
    assert short_path("<string>", str(tmp_path)) == "<string>"
    assert short_path("relative/mod.py", str(tmp_path)) == "relative/mod.py"


# --- atomic writes -------------------------------------------------------------------------


def test_write_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old content that is longer than the new one", encoding="utf-8")
    write_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert os.listdir(tmp_path) == ["out.json"]


def test_write_atomic_gives_the_permissions_a_plain_open_would(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    write_atomic(tmp_path / "atomic", "x")
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_failed_encode_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "half written \ud800")  # a lone surrogate cannot be UTF-8
    assert target.read_text(encoding="utf-8") == "old"
    assert os.listdir(tmp_path) == ["out.json"]


def test_a_failed_replace_leaves_no_temp_file(tmp_path: Path) -> None:
    folder = tmp_path / "a-directory"
    folder.mkdir()
    with pytest.raises(OSError):
        write_atomic(folder, "text")  # os.replace cannot put a file over a directory
    assert os.listdir(tmp_path) == ["a-directory"]
    assert os.listdir(folder) == []


def test_a_missing_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "no-such-dir" / "out.json", "text")
    assert os.listdir(tmp_path) == []
