"""What the start-up hook that follows child processes costs ``python -c pass``.

``unstall run`` follows spawned children through ``unstall-follow.pth`` in site-packages
(see :mod:`unstall._cli.follow`); every Python start-up in the environment runs its one
line, which does nothing unless ``UNSTALL_FOLLOW`` is set. Measured here: two fresh venvs
with nothing installed, identical but for that file, each running ``python -c pass``,
alternately (load drifts hit both alike). CPU time (user + system, ``getrusage``) is the
robust figure on a shared machine; wall time mostly measures waiting for a CPU.

Whole start-ups are noisy on a shared machine (a start-up is ~10 ms, the hook's share a
fraction of a millisecond), so the same start-ups are also counted in instructions, which
do not depend on the load: ``valgrind --tool=callgrind`` runs ``python -c pass`` once in
each venv (a third one holds an empty ``.pth`` file, to tell ``site``'s cost of any
``.pth`` file from the line's), with ``PYTHONHASHSEED=0`` so that a run repeats exactly.
``python -X importtime`` checks that the hook imports nothing.
"""

from __future__ import annotations

import os
import re
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
EMPTY = "python -c pass, with an empty .pth"


def _installed_pth() -> Path | None:
    for folder in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        if Path(folder, PTH).exists():
            return Path(folder, PTH)
    return None


def _venv(root: Path, pth: Path | None, empty: bool = False) -> str:
    """A fresh venv with nothing installed, holding ``pth`` (or an empty ``.pth``) if asked."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    if pth is not None or empty:
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
        target = Path(out.stdout.strip())
        if pth is not None:
            shutil.copy(pth, target)
        else:
            (target / "empty.pth").write_text("", encoding="utf-8")
    return python


def _one(python: str, env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def run(opts: BenchOptions) -> list[Table]:
    timed = Table(
        "Start-up: the child-following hook when unstall is not running",
        ["command", "CPU median", "CPU mean", "wall median", "vs plain (CPU mean)"],
    )
    counted = Table(
        "Start-up: instructions executed by python -c pass (callgrind)",
        ["command", "instructions", "vs plain"],
    )
    pth = _installed_pth()
    if pth is None:
        for table in (timed, counted):
            table.notes.append(f"skipped: {PTH} is not in this environment's site-packages")
        return [timed, counted]
    env = {k: v for k, v in os.environ.items() if k != "UNSTALL_FOLLOW"}
    with tempfile.TemporaryDirectory() as tmp:
        pythons = {
            PLAIN: _venv(Path(tmp, "plain"), None),
            EMPTY: _venv(Path(tmp, "empty"), None, empty=True),
            HOOKED: _venv(Path(tmp, "hook"), pth),
        }
        _time_start_ups(timed, opts, {n: pythons[n] for n in (PLAIN, HOOKED)}, env)
        _count_instructions(counted, pythons, env)
    return [timed, counted]


def _time_start_ups(
    table: Table, opts: BenchOptions, pythons: dict[str, str], env: dict[str, str]
) -> None:
    runs = 60 if opts.quick else 1000
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
    imported = _imported_by_hook(env)
    table.notes.append(
        "unstall modules imported at start-up (python -X importtime -c pass, in this "
        "environment, where unstall is installed): " + (", ".join(imported) or "none")
    )


def _imported_by_hook(env: dict[str, str]) -> list[str]:
    """The unstall modules ``python -X importtime -c pass`` lists (none, if the hook is idle)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
    )
    names = (line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines())
    return [name for name in names if name.startswith("unstall")]


def _count_instructions(table: Table, pythons: dict[str, str], env: dict[str, str]) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        table.notes.append("skipped: valgrind is not installed")
        return
    counts = {name: _instructions(valgrind, python, env) for name, python in pythons.items()}
    plain = counts[PLAIN]
    for name, count in counts.items():
        extra = f"{count - plain:+,} ({(count - plain) / plain:+.2%})" if name != PLAIN else ""
        table.add(name, f"{count:,}", extra)
    table.notes.append(
        "valgrind --tool=callgrind, one run each, PYTHONHASHSEED=0 (a run repeats exactly)"
    )


def _instructions(valgrind: str, python: str, env: dict[str, str]) -> int:
    """Instructions (callgrind's ``Ir``) executed by ``python -c pass``."""
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-c", "pass"]
    out = subprocess.run(
        command, env={**env, "PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True
    )
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count in callgrind's output: {out.stderr[-300:]!r}")
    return int(match.group(1))
