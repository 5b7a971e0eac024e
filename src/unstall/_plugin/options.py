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
DEFAULT_BUDGET = 0.001
# --unstall-strict=VALUE and ini unstall_strict: what each word sets.
_STRICT_WORDS = {
    "costly": ("level", "costly"),
    "all": ("level", "all"),
    "project": ("only", "project"),
}
_INI_TRUE = ("true", "yes", "on", "1")
_INI_FALSE = ("false", "no", "off", "0", "")


@dataclass(frozen=True, slots=True)
class StrictMode:
    """How strict mode reports, for every test it is on in (``unstall.strict``'s options)."""

    level: str = "costly"
    only: str = "all"
    budget: float = DEFAULT_BUDGET


@dataclass(frozen=True, slots=True)
class Defaults:
    """The run's settings, before any marker."""

    watch: bool
    threshold: float
    strict: bool
    baseline: Path | None = None
    outputs: tuple[tuple[Writer, str], ...] = ()  # --unstall-json/html/trace files
    mode: StrictMode = StrictMode()

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
        nargs="?",
        const="costly",
        default=None,
        metavar="MODE",
        help="strict mode for every test: a blocking call on an event loop fails the test; "
        "MODE (written --unstall-strict=project) is costly (default: cheap metadata calls "
        "within the budget only warn, once per call site), all (every known call fails) "
        "or project (only calls whose culprit line is the project's), or all,project",
    )
    group.addoption(
        "--unstall-strict-budget",
        default=None,
        metavar="SECONDS",
        help="seconds a cheap call (os.stat, a small read) may take in strict mode before it "
        f"fails its test (default: ini unstall_strict_budget, else {DEFAULT_BUDGET})",
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
    parser.addini(
        "unstall_strict",
        "strict mode for every test, as --unstall-strict: true, false, costly, all, project",
        default="",
    )
    parser.addini(
        "unstall_strict_budget", "strict mode's budget for cheap calls, in seconds", default=""
    )


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


def parse_strict(value: str, source: str) -> StrictMode:
    """``costly``, ``all``, ``project`` or ``all,project``; UsageError naming ``source``."""
    settings: dict[str, str] = {}
    for word in (w.strip().lower() for w in value.split(",")):
        known = _STRICT_WORDS.get(word)
        if known is None or known[0] in settings:
            raise pytest.UsageError(
                f"{source} takes costly, all or project (or all,project), got {value!r}"
            )
        settings[known[0]] = known[1]
    return StrictMode(settings.get("level", "costly"), settings.get("only", "all"))


def _cli_strict(config: pytest.Config, raw: str) -> StrictMode:
    """``--unstall-strict VALUE``; a VALUE that is a test path was meant as one: hand it back."""
    try:
        return parse_strict(raw, "--unstall-strict")
    except pytest.UsageError:
        if not raw.strip() or not Path(raw.split("::")[0]).exists():
            raise
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.insert(0, raw)
    else:
        config.args[:] = [raw]
    return StrictMode()


def _ini_strict(config: pytest.Config) -> StrictMode | None:
    raw = config.getini("unstall_strict")
    text = str(raw).strip().lower() if not isinstance(raw, bool) else str(raw).lower()
    if text in _INI_FALSE:
        return None
    if text in _INI_TRUE:
        return StrictMode()
    return parse_strict(text, "ini option unstall_strict")


def _budget(config: pytest.Config) -> float:
    raw = config.getoption("unstall_strict_budget")
    if raw is not None:
        return parse_threshold(raw, "--unstall-strict-budget")
    ini = str(config.getini("unstall_strict_budget")).strip()
    return parse_threshold(ini, "ini option unstall_strict_budget") if ini else DEFAULT_BUDGET


def _strict_mode(config: pytest.Config) -> tuple[bool, StrictMode]:
    """Whether the option or the ini turns strict mode on for every test, and how it reports.

    The budget is read (and checked) either way: a marker may turn strict mode on.
    """
    raw = config.getoption("unstall_strict")
    mode = _cli_strict(config, raw) if raw is not None else _ini_strict(config)
    budget = _budget(config)
    if mode is None:
        return False, StrictMode(budget=budget)
    return True, StrictMode(mode.level, mode.only, budget)


def read_defaults(config: pytest.Config) -> Defaults:
    """The run's defaults from the options, ini and ``[tool.unstall]``; UsageError if bad."""
    raw = config.getoption("unstall")
    watch = raw is not None or bool(config.getini("unstall_watch"))
    threshold = _cli_threshold(config, raw) if raw else None
    strict, mode = _strict_mode(config)
    baseline = _path_option(config, "unstall_baseline", "--unstall-baseline")
    outputs = _outputs(config)
    # Report files watch every test, as --unstall; a baseline alone watches stalls too.
    watch = watch or bool(outputs) or (baseline is not None and not strict)
    if threshold is None:
        # Read [tool.unstall] only for a run that watches: an idle plugin costs nothing.
        threshold = _default_threshold(config) if watch or strict else DEFAULT_THRESHOLD
    return Defaults(watch, threshold, strict, baseline, outputs, mode)
