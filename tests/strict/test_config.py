"""[tool.unstall] in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from unstall._strict.config import (
    ConfigError,
    ProjectConfig,
    _cached,
    find_pyproject,
    load,
    project_config,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(text)
    return path


def test_reads_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[project]\nname = "x"\n[tool.unstall]\nthreshold = 0.05\nstrict_action = "warn"\n'
        'strict_allow = ["mylib", " *.py "]\nother_key = 1\n',
    )
    assert load(path) == ProjectConfig(path, 0.05, "warn", ("mylib", "*.py"))


def test_missing_table_means_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[project]\nname = "x"\n')
    assert load(path) == ProjectConfig(path=path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("threshold = 'fast'", "threshold must be a number"),
        ("threshold = true", "threshold must be a number"),
        ("threshold = -1", "threshold must be > 0"),
        ("threshold = nan", "threshold must be > 0"),
        ("strict_action = 'explode'", "strict_action must be one of"),
        ("strict_allow = 'mylib'", "strict_allow must be a list"),
        ("strict_allow = ['ok', 3]", "strict_allow must be a list"),
        ("strict_allow = ['']", "strict_allow must be a list"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, f"[tool.unstall]\n{body}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_bad_toml_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[tool.unstall\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="must be a table"):
        load(write(tmp_path, "[tool]\nunstall = 3\n"))


def test_nearest_pyproject_upwards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[tool.unstall]\nthreshold = 0.2\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_pyproject(deep) == path
    monkeypatch.chdir(deep)
    _cached.cache_clear()
    try:
        assert project_config().threshold == 0.2
    finally:
        monkeypatch.undo()
        _cached.cache_clear()


def test_no_pyproject_anywhere(tmp_path: Path) -> None:
    # pytest's tmp dirs live under the system temp dir, with no pyproject.toml above
    assert find_pyproject(tmp_path) is None
    assert _cached(str(tmp_path)) == ProjectConfig()
