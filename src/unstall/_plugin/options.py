"""Command-line and ini options, and the defaults they make for the run."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from unstall._report.writers import Writer

DEFAULT_THRESHOLD = 0.1


@dataclass(frozen=True, slots=True)
class Defaults:
    """The run's settings, before any marker."""

    watch: bool
    threshold: float
    strict: bool
    baseline: Path | None = None
    outputs: tuple[tuple[Writer, str], ...] = ()  # --unstall-json/html/trace files

    @property
    def active(self) -> bool:
        """Whether any test is watched without a marker asking for it."""
        return self.watch or self.strict or self.baseline is not None or bool(self.outputs)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("unstall", "unstall: fail tests that stall or block the event loop")
    group.addoption(
        "--unstall",
        nargs="?",
        const="",
        default=None,
        metavar="THRESHOLD",
        help="fail a test whose event loop stalls longer than THRESHOLD seconds "
        "(default: ini unstall_threshold, [tool.unstall] threshold, else 0.1); "
        "write a value as --unstall=0.05",
    )
    group.addoption(
        "--unstall-strict",
        action="store_true",
        default=None,
        help="strict mode for every test: a blocking call on an event loop fails the test",
    )
    group.addoption(
        "--unstall-baseline",
        default=None,
        metavar="FILE",
        help="known findings: written (and the run passes) when FILE does not exist; "
        "when it does, findings listed there do not fail their test, new ones do",
    )
    from unstall._report.writers import WRITERS

    for writer in WRITERS.values():
        group.addoption(
            f"--unstall-{writer.name}",
            metavar="FILE",
            default=None,
            help="watch every test, as --unstall, and after the run write the stalls "
            f"that failed tests to FILE ({writer.describes})",
        )
    parser.addini("unstall_watch", "watch every test's event loops, as --unstall", type="bool")
    parser.addini("unstall_threshold", "default stall threshold in seconds", default="")
    parser.addini("unstall_strict", "strict mode for every test, as --unstall-strict", type="bool")


def parse_threshold(value: object, source: str) -> float:
    """A threshold in seconds, or :class:`pytest.UsageError` naming ``source``."""
    if isinstance(value, bool):
        raise pytest.UsageError(f"{source} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise pytest.UsageError(f"{source} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise pytest.UsageError(f"{source} must be > 0 seconds, got {value!r}")
    return seconds


def _default_threshold(config: pytest.Config) -> float:
    ini = str(config.getini("unstall_threshold")).strip()
    if ini:
        return parse_threshold(ini, "ini option unstall_threshold")
    from unstall._strict.config import ConfigError, project_config

    try:
        configured = project_config().threshold
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    return configured if configured is not None else DEFAULT_THRESHOLD


def _cli_threshold(config: pytest.Config, raw: str) -> float | None:
    """``--unstall VALUE``; a VALUE that is a test path was meant as one: hand it back."""
    try:
        float(raw)
    except ValueError:
        if not Path(raw.split("::")[0]).exists():
            raise pytest.UsageError(
                f"--unstall takes an optional threshold in seconds, written --unstall=0.05; "
                f"got {raw!r}, which is neither a number nor an existing test path"
            ) from None
    else:
        return parse_threshold(raw, "--unstall")
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.insert(0, raw)
    else:
        config.args[:] = [raw]
    return None


def _path_option(config: pytest.Config, name: str, flag: str) -> Path | None:
    raw = config.getoption(name)
    if raw is None:
        return None
    path = Path(raw)
    if not str(raw).strip() or path.is_dir():
        raise pytest.UsageError(f"{flag} takes a file name, got {raw!r}")
    if not path.parent.is_dir():
        raise pytest.UsageError(f"{flag}: directory {str(path.parent)!r} does not exist")
    return path.resolve()


def _outputs(config: pytest.Config) -> tuple[tuple[Writer, str], ...]:
    """The report files asked for (``--unstall-json FILE``...), each checked writable."""
    from unstall._report.writers import WRITERS

    outputs = []
    for writer in WRITERS.values():
        path = config.getoption(f"unstall_{writer.name}")
        if path is None:
            continue
        option = f"--unstall-{writer.name}"
        parent = os.path.dirname(os.path.abspath(path))
        if not path or os.path.isdir(path):
            raise pytest.UsageError(f"{option} needs a file name, got {path!r}")
        if not os.path.isdir(parent):
            raise pytest.UsageError(f"{option} {path!r}: directory {parent!r} does not exist")
        writer.load()
        outputs.append((writer, str(path)))
    return tuple(outputs)


def read_defaults(config: pytest.Config) -> Defaults:
    """The run's defaults from the options, ini and ``[tool.unstall]``; UsageError if bad."""
    raw = config.getoption("unstall")
    watch = raw is not None or bool(config.getini("unstall_watch"))
    threshold = _cli_threshold(config, raw) if raw else None
    strict = bool(config.getoption("unstall_strict") or config.getini("unstall_strict"))
    baseline = _path_option(config, "unstall_baseline", "--unstall-baseline")
    outputs = _outputs(config)
    # Report files watch every test, as --unstall; a baseline alone watches stalls too.
    watch = watch or bool(outputs) or (baseline is not None and not strict)
    if threshold is None:
        # Read [tool.unstall] only for a run that watches: an idle plugin costs nothing.
        threshold = _default_threshold(config) if watch or strict else DEFAULT_THRESHOLD
    return Defaults(watch, threshold, strict, baseline, outputs)
