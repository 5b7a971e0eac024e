"""Run a Python program in this interpreter exactly as ``python`` would run it.

``python script.py``, ``python dir_or_zip`` and ``python -m module`` each set up
``sys.argv``, ``sys.path[0]`` and the ``__main__`` module's attributes in their own way;
:func:`prepare` finds and compiles the code and records that set-up, :func:`execute` runs
it in a fresh ``__main__`` module. The recipe follows what python itself does (checked by
the tests side by side with python), the same way coverage.py and cProfile launch programs.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
import zipfile
from dataclasses import dataclass
from typing import Any

__all__ = ["LaunchError", "Outcome", "Program", "execute", "is_launch_frame", "prepare"]


class LaunchError(Exception):
    """The program cannot be run: missing, no ``__main__``, unreadable. One line."""


@dataclass(frozen=True)
class Outcome:
    """How the program ended, when it did not raise ``SystemExit``."""

    status: int
    interrupted: bool = False


@dataclass
class Program:
    code: types.CodeType
    argv0: str
    path0: str
    attrs: dict[str, Any]


def prepare(script: str | None = None, module: str | None = None) -> Program:
    """Find and compile a script (file, directory or zip) or a module, as python would.

    Raises:
        LaunchError: it cannot be run (missing, no ``__main__``, unreadable); one line.
        SyntaxError: the code does not compile (reported by python without a traceback).
    """
    if module is not None:
        return _prepare_module(module)
    if script is None:
        raise LaunchError("no script or -m module given")
    return _prepare_path(script)


def _prepare_path(script: str) -> Program:
    if not os.path.exists(script):
        raise LaunchError(f"can't open file {os.path.abspath(script)!r}: no such file")
    if os.path.isdir(script) or _is_zip(script):
        spec = importlib.machinery.PathFinder.find_spec("__main__", [os.path.abspath(script)])
        if spec is None or spec.loader is None:
            raise LaunchError(f"can't find '__main__' module in {script!r}")
        return Program(_code_of(spec), script, os.path.abspath(script), _spec_attrs(spec, ""))
    path = os.path.abspath(script)
    loader: importlib.abc.FileLoader
    if path.endswith(".pyc"):
        loader = importlib.machinery.SourcelessFileLoader("__main__", path)
    else:
        loader = importlib.machinery.SourceFileLoader("__main__", path)
    try:
        code = _compile_file(path, loader)
    except OSError as exc:
        raise LaunchError(f"can't open file {path!r}: {exc.strerror or exc}") from None
    except SyntaxError:
        raise  # python reports these without a traceback and exit 1; main() does the same
    except (ValueError, ImportError, EOFError) as exc:
        raise LaunchError(f"can't run {path!r}: {exc}") from None
    attrs = {"__file__": path, "__loader__": loader, "__spec__": None, "__package__": None}
    attrs["__cached__"] = None
    return Program(code, script, os.path.dirname(os.path.realpath(path)), attrs)


def _compile_file(path: str, loader: importlib.abc.FileLoader) -> types.CodeType:
    if isinstance(loader, importlib.machinery.SourcelessFileLoader):
        code = loader.get_code("__main__")
        if code is None:
            raise ImportError("no code object in the file")
        return code
    with open(path, "rb") as f:
        source = f.read()
    return compile(source, path, "exec", dont_inherit=True)


def _prepare_module(name: str) -> Program:
    path0 = os.getcwd()
    _set_path0(path0)  # so the module is found where `python -m` would find it
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            main_name = f"{name}.__main__"
            spec = importlib.util.find_spec(main_name)
            if spec is None:
                raise LaunchError(
                    f"no module named {main_name}; {name!r} is a package and cannot be run"
                )
    except (ImportError, ValueError) as exc:
        raise LaunchError(f"error while finding module {name!r}: {exc}") from None
    if spec is None or spec.loader is None or spec.origin is None:
        raise LaunchError(f"no module named {name}")
    return Program(_code_of(spec), spec.origin, path0, _spec_attrs(spec, spec.parent))


def _set_path0(path0: str) -> None:
    """Put the program's directory first on ``sys.path``, where unstall's own entry was.

    Under ``python -P`` (safe path) python adds no such entry, and neither do we.
    """
    if not sys.flags.safe_path:
        sys.path[0:1] = [path0]


def _is_zip(path: str) -> bool:
    return os.path.isfile(path) and zipfile.is_zipfile(path)


def _code_of(spec: importlib.machinery.ModuleSpec) -> types.CodeType:
    loader = spec.loader
    get_code = getattr(loader, "get_code", None)
    code = get_code(spec.name) if get_code is not None else None
    if code is None:
        raise LaunchError(f"no code to run in {spec.origin or spec.name!r}")
    assert isinstance(code, types.CodeType)
    return code


def _spec_attrs(spec: importlib.machinery.ModuleSpec, package: str | None) -> dict[str, Any]:
    return {
        "__file__": spec.origin,
        "__loader__": spec.loader,
        "__spec__": spec,
        "__package__": package,
        "__cached__": spec.cached,
    }


def execute(program: Program, args: list[str]) -> Outcome:
    """Run ``program`` as ``__main__`` in this interpreter, as python would.

    ``SystemExit`` propagates unchanged (python prints its message and exits with it). Any
    other exception is printed through ``sys.excepthook`` with the launcher's frame cut off,
    and gives status 1; for a ``KeyboardInterrupt`` the outcome says so, because python
    then ends the process by SIGINT (the caller does that after its own exit work).
    """
    module = types.ModuleType("__main__")
    module.__dict__.update(program.attrs, __builtins__=builtins)
    sys.argv[:] = [program.argv0, *args]
    _set_path0(program.path0)
    sys.modules["__main__"] = module
    try:
        exec(program.code, module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        return Outcome(1, interrupted=isinstance(exc, KeyboardInterrupt))
    return Outcome(0)


def is_launch_frame(file: str, function: str) -> bool:
    """Whether a stack frame is the one that runs the program (its ``<module>`` is next)."""
    return file == __file__ and function == "execute"
