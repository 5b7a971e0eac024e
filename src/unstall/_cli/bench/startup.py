"""What following child processes costs a Python start-up, with and without ``unstall run``.

``unstall run`` follows the interpreters a program starts by putting a ``sitecustomize``
first on their ``PYTHONPATH`` (see :mod:`unstall._cli.follow`); nothing is installed in
site-packages, so a start-up outside ``unstall run`` runs none of unstall's code. Measured
here, in fresh venvs with nothing else installed: ``python -c pass`` without unstall,
with unstall installed (a copy of this package in site-packages, as its wheel installs it),
and as a child followed by ``unstall run`` (the environment a run gives its children).

Each start-up is timed alternately with the others (load drifts hit all alike); CPU time
(user + system, ``getrusage``) is the robust figure on a shared machine, wall time mostly
measures waiting for a CPU. Whole start-ups are noisy, so they are also counted in
instructions, which do not depend on the load: ``valgrind --tool=callgrind``, one run
each with ``PYTHONHASHSEED=0`` (a run repeats exactly).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unstall._cli.bench import BenchOptions
from unstall._cli.bench._table import Table

PLAIN = "python -c pass, unstall not installed"
INSTALLED = "python -c pass, unstall installed"
FOLLOWED = "python -c pass, as a child followed by unstall run"
_PACKAGE = Path(__file__).resolve().parents[2]


def _venv(root: Path, with_unstall: bool) -> tuple[str, Path]:
    """A fresh venv (with a copy of this unstall in site-packages, if asked)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)
    site_packages = Path(out.stdout.strip())
    if with_unstall:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(_PACKAGE, site_packages / "unstall", ignore=ignore)
        # compiled, as pip compiles a wheel's modules when it installs them
        compile_all = [python, "-m", "compileall", "-q", str(site_packages / "unstall")]
        subprocess.run(compile_all, check=True)
    return python, site_packages


def _followed_env(env: dict[str, str], site_packages: Path, run_dir: Path) -> dict[str, str]:
    """What ``unstall run`` gives its children (the run directory and options included)."""
    (run_dir / "options.json").write_text(json.dumps({"threshold": 0.1}), encoding="utf-8")
    boot = site_packages / "unstall" / "_cli" / "follow_boot"
    return {**env, "UNSTALL_FOLLOW": str(run_dir), "PYTHONPATH": str(boot)}


def _one(python: str, env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def run(opts: BenchOptions) -> list[Table]:
    timed = Table(
        "Start-up: following child processes, with and without unstall run",
        ["command", "CPU median", "CPU mean", "wall median", "vs not installed (CPU mean)"],
    )
    counted = Table(
        "Start-up: instructions executed by python -c pass (callgrind)",
        ["command", "instructions", "vs not installed"],
    )
    env = {k: v for k, v in os.environ.items() if k not in ("UNSTALL_FOLLOW", "PYTHONPATH")}
    with tempfile.TemporaryDirectory() as tmp:
        # names of one length: a longer path alone costs start-up a few thousand instructions
        plain, _ = _venv(Path(tmp, "venv1"), with_unstall=False)
        installed, site_packages = _venv(Path(tmp, "venv2"), with_unstall=True)
        run_dir = Path(tmp, "run")
        run_dir.mkdir()
        runs = {
            PLAIN: (plain, env),
            INSTALLED: (installed, env),
            FOLLOWED: (installed, _followed_env(env, site_packages, run_dir)),
        }
        _time_start_ups(timed, opts, runs)
        _count_instructions(counted, runs)
        imported = _unstall_imports(installed, env)
    timed.notes.append(
        "unstall modules imported by a start-up outside unstall run (python -X importtime "
        "-c pass, unstall installed): " + (", ".join(imported) or "none")
    )
    return [timed, counted]


def _time_start_ups(
    table: Table, opts: BenchOptions, runs: dict[str, tuple[str, dict[str, str]]]
) -> None:
    count = 15 if opts.quick else 1000
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(count):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
            c, w = _one(*runs[name])
            cpu[name].append(c)
            wall[name].append(w)
    plain = statistics.fmean(cpu[PLAIN])
    for name in runs:
        mean = statistics.fmean(cpu[name])
        table.add(
            name,
            f"{statistics.median(cpu[name]) * 1e3:.2f} ms",
            f"{mean * 1e3:.2f} ms",
            f"{statistics.median(wall[name]) * 1e3:.2f} ms",
            f"{mean / plain:.3f}x",
        )
    a, b = cpu[PLAIN], cpu[INSTALLED]
    half = 1.96 * (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    diff = statistics.fmean(b) - statistics.fmean(a)
    table.notes.append(
        f"{count} runs each, alternating; installed minus not installed, mean CPU time: "
        f"{diff * 1e3:+.2f} ms ± {half * 1e3:.2f} ms (95% interval); "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def _unstall_imports(python: str, env: dict[str, str]) -> list[str]:
    """The unstall modules ``python -X importtime -c pass`` lists (none, outside a run)."""
    out = subprocess.run(
        [python, "-X", "importtime", "-c", "pass"], env=env, capture_output=True, text=True
    )
    names = (line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines())
    return [name for name in names if name.startswith("unstall")]


def _count_instructions(table: Table, runs: dict[str, tuple[str, dict[str, str]]]) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        table.notes.append("skipped: valgrind is not installed")
        return
    counts = {name: _instructions(valgrind, *runs[name]) for name in runs}
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
