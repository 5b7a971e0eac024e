"""How many CPUs this process may use: its affinity mask and its cgroup's CPU quota.

``os.cpu_count()`` counts the host's CPUs. A container limited to 2 CPUs on a 64-CPU host
(a cgroup quota), or a process started under ``taskset -c 0,1`` (an affinity mask), gets
nothing from 64 CPU-bound workers but memory use and context switches.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_limit"]


def available_cpus(root: Path = Path("/")) -> int:
    """The CPUs this process may run on, further capped by its cgroup CPU quota; >= 1.

    ``root`` is the filesystem root holding ``proc`` and ``sys`` (for tests).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def cgroup_cpu_limit(root: Path = Path("/")) -> int | None:
    """The CPU quota of this process's cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``)
    and of its ancestors, rounded up to whole CPUs; ``None`` when unlimited or unknown."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: "0::/path"
            base = root / "sys/fs/cgroup"
            limits += _walk(base, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for base in _v1_mounts(root):
                limits += _walk(base, path, _v1_limit)
    if not limits:
        return None
    return max(1, math.ceil(min(limits)))


def _walk(base: Path, path: str, read: object) -> list[float]:
    """The limits found in ``path`` and every ancestor under ``base``; inside a container
    the cgroup's own directory is usually mounted as ``base`` itself, so that counts too."""
    found = []
    parts = [p for p in path.strip("/").split("/") if p]
    for depth in range(len(parts), -1, -1):
        limit = read(base.joinpath(*parts[:depth]))  # type: ignore[operator]
        if limit is not None:
            found.append(limit)
    return found


def _v2_limit(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return _ratio(quota, period)


def _v1_limit(directory: Path) -> float | None:
    try:
        quota = (directory / "cpu.cfs_quota_us").read_text().strip()
        period = (directory / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _v1_mounts(root: Path) -> list[Path]:
    """Where the cgroup v1 ``cpu`` controller is mounted (``/proc/self/mounts``)."""
    try:
        mounts = (root / "proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    found = []
    for mount in mounts:
        fields = mount.split()
        if len(fields) >= 4 and fields[2] == "cgroup" and "cpu" in fields[3].split(","):
            found.append(root / fields[1].lstrip("/"))
    return found
