"""``@pytest.mark.unstall(...)`` and ``@pytest.mark.unstall_allow(...)``, read per test."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from unstall._plugin.options import Defaults, parse_threshold

MARKER_HELP = (
    "unstall(threshold=None, strict=None, allow=(), off=False): watch this test (a bare "
    "marker or threshold= turns watching on); strict=True/False turns strict mode on or "
    "off; allow= lists calls, modules or functions this test may block in; off=True "
    "leaves the test unwatched"
)
ALLOW_MARKER_HELP = (
    "unstall_allow(*entries): let this test block its event loop; with entries "
    "(call names, modules, functions, file globs) strict mode allows only those"
)
_KEYWORDS = ("threshold", "strict", "allow", "off")


@dataclass(frozen=True, slots=True)
class Settings:
    """How one test is watched."""

    threshold: float | None  # None: stalls are not watched
    strict: bool
    allow: tuple[str, ...] = ()


def _flag(item: pytest.Item, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.unstall({name}=...) must be True or False, got {value!r}"
        )
    return value


def _entries(item: pytest.Item, value: object) -> tuple[str, ...]:
    where = f"{item.nodeid}: @pytest.mark.unstall(allow=...)"
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise pytest.UsageError(
            f'{where} must be a list of strings such as ["mymodule.function"], got {value!r}'
        )
    entries = tuple(value)
    bad = [e for e in entries if not isinstance(e, str) or not e.strip()]
    if bad:
        raise pytest.UsageError(f"{where}: entries must be non-empty strings, got {bad[0]!r}")
    return entries


def _check_marker(item: pytest.Item, marker: pytest.Mark) -> None:
    unknown = sorted(set(marker.kwargs) - set(_KEYWORDS))
    if unknown or marker.args:
        got = ", ".join(unknown) if unknown else f"positional {marker.args!r}"
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.unstall takes threshold=, strict=, allow= and "
            f"off= only, got {got}"
        )


def settings_for(item: pytest.Item, defaults: Defaults) -> Settings | None:
    """The test's settings, ``None`` when it is not watched; UsageError for a bad marker."""
    marker = item.get_closest_marker("unstall")
    legacy = item.get_closest_marker("unstall_allow")
    watch, threshold, strict = defaults.watch, defaults.threshold, defaults.strict
    entries: tuple[str, ...] = ()
    if marker is not None:
        _check_marker(item, marker)
        kwargs = marker.kwargs
        if _flag(item, "off", kwargs.get("off", False)):
            return None
        # A bare marker, or one naming a threshold, turns watching on for this test.
        watch = watch or "threshold" in kwargs or not kwargs
        if kwargs.get("threshold") is not None:
            threshold = parse_threshold(
                kwargs["threshold"], f"{item.nodeid}: @pytest.mark.unstall(threshold=...)"
            )
        if kwargs.get("strict") is not None:
            strict = _flag(item, "strict", kwargs["strict"])
        if "allow" in kwargs:
            entries = _entries(item, kwargs["allow"])
    if legacy is not None:
        if not legacy.args:
            return None
        entries += tuple(str(a) for a in legacy.args)
    if not (watch or strict):
        return None
    return Settings(threshold if watch else None, strict, entries)


def has_marker(item: pytest.Item) -> bool:
    """Whether the test asks to be watched whatever the run's options are."""
    marker = item.get_closest_marker("unstall")
    return marker is not None and marker.kwargs.get("off") is not True


def on_trio(item: pytest.Item) -> bool:
    """Whether the test runs on trio (anyio's trio backend, pytest-trio): not watched."""
    if item.get_closest_marker("trio") is not None:
        return True
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("anyio_backend") if callspec is not None else None
    if isinstance(backend, tuple | list) and backend:
        backend = backend[0]
    return backend == "trio"
