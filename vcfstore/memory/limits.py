"""The memory a process may really use: user limits, cgroup limits (v1 and v2), physical RAM.

``psutil.virtual_memory()`` reports the machine's RAM and ignores the cgroup a process runs in
(Docker, Kubernetes, Slurm, systemd slices): a budget taken from it alone can exceed what the
kernel will let the process have, and the OOM killer acts on the cgroup's limit. This module
reads the limits on the process's own cgroup path and every ancestor (a parent's limit binds its
children), for both cgroup versions, from a configurable root so tests can use fake trees.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vcfstore.errors import ArgumentError

# cgroup v1 reports "no limit" as the largest page-aligned signed 64-bit value (or near it).
_V1_UNLIMITED = 1 << 60

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
}


@dataclass(frozen=True)
class Limit:
    """One memory limit that applies to the process, with where it comes from."""

    source: str
    nbytes: int


def parse_size(value: int | float | str, *, machine_limit: int | None = None) -> int:
    """Parse a memory size: bytes, ``"11GB"`` (11e9), ``"11GiB"`` (11 * 2**30), or ``"80%"``.

    A percentage is of ``machine_limit`` (by default :func:`machine_limit`: the smaller of
    physical RAM and every cgroup limit of this process).
    """
    if isinstance(value, bool):
        raise ArgumentError(f"a memory size cannot be {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ArgumentError(f"a memory size must be positive, not {value}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%|[a-zA-Z]*)\s*", str(value))
    if not m or (m.group(2) != "%" and m.group(2).lower() not in _UNITS):
        raise ArgumentError(f"cannot read {value!r} as a memory size; use e.g. 11GB, 11GiB, 80% or a byte count")
    number, unit = float(m.group(1)), m.group(2)
    if unit == "%":
        if not 0 < number <= 100:
            raise ArgumentError(f"a memory percentage must be in (0, 100], not {value!r}")
        base = machine_limit if machine_limit is not None else effective_machine_limit().nbytes
        return int(base * number / 100)
    size = int(number * _UNITS[unit.lower()])
    if size <= 0:
        raise ArgumentError(f"a memory size must be positive, not {value!r}")
    return size


def cgroup_limits(proc: str | os.PathLike[str] = "/proc", pid: str = "self") -> list[Limit]:
    """Memory limits on the process's cgroup and its ancestors, for cgroup v1 and v2.

    Parameters
    ----------
    proc : path
        The proc file system (a fake tree in tests).
    pid : str
        Which process: ``"self"`` or a pid.
    """
    proc = Path(proc)
    try:
        lines = (proc / pid / "cgroup").read_text().splitlines()
        mounts = (proc / pid / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    limits: list[Limit] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, cg_path = parts
        if controllers == "":  # v2 unified hierarchy
            for mount_root, mount_point in _mounts(mounts, "cgroup2", None):
                limits += _walk(mount_point, mount_root, cg_path, ("memory.max", "memory.high"), "v2")
        elif "memory" in controllers.split(","):
            for mount_root, mount_point in _mounts(mounts, "cgroup", "memory"):
                limits += _walk(mount_point, mount_root, cg_path, ("memory.limit_in_bytes",), "v1")
    return limits


def _mounts(mountinfo: list[str], fstype: str, option: str | None) -> list[tuple[str, Path]]:
    """(root inside the hierarchy, mount point) of each mount of a cgroup file system type."""
    out = []
    for line in mountinfo:
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3 or rfields[0] != fstype:
            continue
        if option is not None and option not in rfields[2].split(","):
            continue
        out.append((fields[3], Path(fields[4])))
    return out


def _walk(mount_point: Path, mount_root: str, cg_path: str, files: tuple[str, ...], version: str) -> list[Limit]:
    """Read the limit files from the process's cgroup directory up to the mount point."""
    rel = cg_path
    if mount_root != "/" and (cg_path == mount_root or cg_path.startswith(mount_root.rstrip("/") + "/")):
        rel = cg_path[len(mount_root) :]
    directory = mount_point / rel.lstrip("/")
    if not directory.is_dir():  # a container sees its own cgroup as the mount's root
        directory = mount_point
    out = []
    while True:
        for name in files:
            value = _read_limit(directory / name)
            if value is not None:
                out.append(Limit(f"cgroup {version} {directory / name}", value))
        if directory == mount_point or mount_point not in directory.parents:
            break
        directory = directory.parent
    return out


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _V1_UNLIMITED else value


def physical_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def effective_machine_limit(proc: str | os.PathLike[str] = "/proc") -> Limit:
    """The smallest of physical RAM and every cgroup memory limit on this process."""
    candidates = [Limit("physical RAM", physical_memory()), *cgroup_limits(proc)]
    return min(candidates, key=lambda lim: lim.nbytes)
