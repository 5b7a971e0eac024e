"""What the start-up hook that follows child processes costs ``python -c pass``.

``unstall run`` follows spawned children through ``unstall-follow.pth`` in site-packages
(see :mod:`unstall._cli.follow`); every Python start-up in the environment runs its one
line, which does nothing unless ``UNSTALL_FOLLOW`` is set. Measured here: two fresh venvs
with nothing installed, identical but for that file, each running ``python -c pass``,
alternately (load drifts hit both alike). CPU time (user + system, ``getrusage``) is the
robust figure on a shared machine; wall time mostly measures waiting for a CPU.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from unstall._cli.bench import BenchOptions
from unstall._cli.bench._table import Table

PTH = "unstall-follow.pth"
PLAIN, HOOKED = "python -c pass", "python -c pass, with unstall's .pth"


def _installed_pth() -> Path | None:
    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        if Path(folder, PTH).exists():
            return Path(folder, PTH)
    return None


def _venv(root: Path, pth: Path | None) -> str:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    if pth is not None:
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
        shutil.copy(pth, out.stdout.strip())
    return python


def _one(python: str, env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def run(opts: BenchOptions) -> list[Table]:
    table = Table(
        "Start-up: the child-following hook when unstall is not running",
        ["command", "CPU median", "CPU mean", "wall median", "vs plain (CPU mean)"],
    )
    pth = _installed_pth()
    if pth is None:
        table.notes.append(f"skipped: {PTH} is not in this environment's site-packages")
        return [table]
    runs = 60 if opts.quick else 1000
    env = {k: v for k, v in os.environ.items() if k != "UNSTALL_FOLLOW"}
    with tempfile.TemporaryDirectory() as tmp:
        pythons = {PLAIN: _venv(Path(tmp, "plain"), None), HOOKED: _venv(Path(tmp, "hook"), pth)}
        cpu: dict[str, list[float]] = {name: [] for name in pythons}
        wall: dict[str, list[float]] = {name: [] for name in pythons}
        for i in range(runs):
            for name in list(pythons)[:: 1 if i % 2 == 0 else -1]:
                c, w = _one(pythons[name], env)
                cpu[name].append(c)
                wall[name].append(w)
    plain = statistics.fmean(cpu[PLAIN])
    for name in pythons:
        mean = statistics.fmean(cpu[name])
        table.add(
            name,
            f"{statistics.median(cpu[name]) * 1e3:.2f} ms",
            f"{mean * 1e3:.2f} ms",
            f"{statistics.median(wall[name]) * 1e3:.2f} ms",
            f"{mean / plain:.3f}x",
        )
    a, b = cpu[PLAIN], cpu[HOOKED]
    half = 1.96 * (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    diff = statistics.fmean(b) - statistics.fmean(a)
    table.notes.append(
        f"{runs} runs each, alternating; difference in mean CPU time {diff * 1e3:+.2f} ms "
        f"± {half * 1e3:.2f} ms (95% interval); load average {os.getloadavg()[0]:.1f}"
    )
    return [table]
