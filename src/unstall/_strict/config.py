"""Project settings from ``[tool.unstall]`` in pyproject.toml.

::

    [tool.unstall]
    threshold = 0.1                        # seconds: a longer loop stall is reported
    strict_action = "raise"                # "raise" | "warn" | "log"
    strict_allow = ["mylib.cache", "*/migrations/*.py", "time.sleep"]

The nearest ``pyproject.toml`` from the current directory upwards is read once per
process and directory. A missing file or table means defaults; a wrong value is a
:class:`ConfigError` naming the file and the key. Keys this module does not know are
left to other parts of unstall.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unstall._exceptions import ConfigError

__all__ = ["ConfigError", "ProjectConfig", "find_pyproject", "load", "project_config"]

_ACTIONS = ("raise", "warn", "log")


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    """The settings; every field has the default used when the key is absent."""

    path: Path | None = None
    threshold: float | None = None
    strict_action: str | None = None
    strict_allow: tuple[str, ...] = ()


def find_pyproject(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` (default: cwd) or a parent directory."""
    here = Path(start if start is not None else os.getcwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _threshold(path: Path, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{path}: [tool.unstall] threshold must be a number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{path}: [tool.unstall] threshold must be > 0 seconds, got {value!r}")
    return float(value)


def _action(path: Path, value: Any) -> str:
    if value not in _ACTIONS:
        raise ConfigError(
            f"{path}: [tool.unstall] strict_action must be one of {', '.join(_ACTIONS)}, "
            f"got {value!r}"
        )
    return str(value)


def _allow(path: Path, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(
            f"{path}: [tool.unstall] strict_allow must be a list of non-empty strings, "
            f"got {value!r}"
        )
    return tuple(v.strip() for v in value)


def load(path: str | os.PathLike[str]) -> ProjectConfig:
    """Read ``[tool.unstall]`` from one pyproject.toml; raises :class:`ConfigError`."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("unstall", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{file}: [tool.unstall] must be a table")
    return ProjectConfig(
        path=file,
        threshold=None if "threshold" not in table else _threshold(file, table["threshold"]),
        strict_action=None
        if "strict_action" not in table
        else _action(file, table["strict_action"]),
        strict_allow=_allow(file, table.get("strict_allow", [])),
    )


@functools.lru_cache(maxsize=8)
def _cached(cwd: str) -> ProjectConfig:
    path = find_pyproject(cwd)
    return ProjectConfig() if path is None else load(path)


def project_config() -> ProjectConfig:
    """The settings of the project around the current directory (read once, then cached)."""
    return _cached(os.getcwd())
