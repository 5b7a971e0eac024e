"""``prepare()``: finding and compiling a program the way python does (run it: test_runner.py).

``execute()`` replaces ``__main__`` and ``sys.argv``, so it is tested in subprocesses by
tests/test_runner.py, side by side with python.
"""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import pytest

from unstall._cli.launch import LaunchError, is_launch_frame, prepare


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # -m sets sys.path[0]; keep ours
    return tmp_path


def test_script_file(in_tmp: Path) -> None:
    (in_tmp / "sub").mkdir()
    (in_tmp / "sub" / "app.py").write_text("x = 1\n")
    program = prepare("sub/app.py")
    assert program.argv0 == "sub/app.py"
    assert program.path0 == str(in_tmp / "sub")
    assert program.attrs["__file__"] == str(in_tmp / "sub" / "app.py")
    assert program.attrs["__spec__"] is None
    assert program.code.co_filename == str(in_tmp / "sub" / "app.py")


def test_directory_and_zip(in_tmp: Path) -> None:
    (in_tmp / "tool").mkdir()
    (in_tmp / "tool" / "__main__.py").write_text("x = 1\n")
    program = prepare("tool")
    assert (program.argv0, program.path0) == ("tool", str(in_tmp / "tool"))
    assert program.attrs["__spec__"].name == "__main__"
    with zipfile.ZipFile(in_tmp / "tool.pyz", "w") as zf:
        zf.writestr("__main__.py", "x = 2\n")
    assert prepare("tool.pyz").attrs["__file__"].endswith(os.path.join("tool.pyz", "__main__.py"))


def test_module_and_package(in_tmp: Path) -> None:
    (in_tmp / "pkg").mkdir()
    (in_tmp / "pkg" / "__init__.py").write_text("")
    (in_tmp / "pkg" / "__main__.py").write_text("x = 1\n")
    (in_tmp / "pkg" / "mod.py").write_text("x = 1\n")
    program = prepare(module="pkg.mod")
    assert program.argv0 == str(in_tmp / "pkg" / "mod.py")
    assert program.path0 == str(in_tmp)
    assert (program.attrs["__package__"], program.attrs["__spec__"].name) == ("pkg", "pkg.mod")
    assert prepare(module="pkg").attrs["__spec__"].name == "pkg.__main__"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"script": "missing.py"}, "can't open file"),
        ({"script": "empty"}, "can't find '__main__' module in 'empty'"),
        ({"module": "surely_not_a_module_xyz"}, "no module named surely_not_a_module_xyz"),
        ({"module": "bare"}, "'bare' is a package and cannot be run"),
        ({}, "no script or -m module given"),
    ],
)
def test_what_cannot_run_is_one_line(in_tmp: Path, kwargs: dict[str, str], message: str) -> None:
    (in_tmp / "empty").mkdir()
    (in_tmp / "bare").mkdir()
    (in_tmp / "bare" / "__init__.py").write_text("")
    with pytest.raises(LaunchError, match=message) as info:
        prepare(**kwargs)
    assert "\n" not in str(info.value)


def test_syntax_errors_are_left_to_python_s_own_report(in_tmp: Path) -> None:
    (in_tmp / "bad.py").write_text("def f(:\n")
    with pytest.raises(SyntaxError):
        prepare("bad.py")


def test_launch_frame_is_recognised() -> None:
    import unstall._cli.launch as launch

    assert is_launch_frame(launch.__file__, "execute")
    assert not is_launch_frame(launch.__file__, "prepare")
    assert not is_launch_frame("/app.py", "execute")
