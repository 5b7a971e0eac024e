"""``unstall run --anyio``: the anyio integration with no change to the program."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import PY, child_env, run_unstall

PROGRAM = """\
import threading
import anyio, anyio.to_thread

print(anyio.run(anyio.to_thread.run_sync, lambda: threading.current_thread().name))
"""


def test_run_with_anyio_option_puts_anyio_calls_on_unstall_threads(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(PROGRAM)
    proc = run_unstall(["run", "--anyio", "app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("unstall-anyio-")


def test_run_without_anyio_option_leaves_anyio_alone(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(PROGRAM)
    proc = run_unstall(["run", "app.py"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "AnyIO worker thread\n"


def test_run_with_anyio_option_and_no_anyio_says_so(tmp_path: Path) -> None:
    # A package named anyio that cannot be imported stands for an environment without it.
    (tmp_path / "shadow" / "anyio").mkdir(parents=True)
    (tmp_path / "shadow" / "anyio" / "__init__.py").write_text("raise ImportError('absent')\n")
    (tmp_path / "app.py").write_text("print('ran')\n")
    proc = subprocess.run(
        [PY, "-m", "unstall", "run", "--anyio", "app.py"],
        cwd=tmp_path,
        env=child_env(PYTHONPATH=str(tmp_path / "shadow")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "--anyio: unstall.integrations.anyio needs anyio" in proc.stderr
