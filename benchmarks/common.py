"""Shared helpers of the benchmarks: machine description, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "1kg_chr20_eur"


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, cores, memory, and the versions that matter."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("vcfstore", "numpy", "zarr", "numcodecs", "faiss-cpu", "torch", "cyvcf2", "msprime", "bio2zarr"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S%z"),
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_result(name: str, result: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``<name>.json`` (machine, parameters, raw figures) and return its path."""
    out_dir = out_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=str) + "\n")
    return path


def drop_page_cache(*paths: Path) -> None:
    """Ask the kernel to drop cached pages of these files (and of files under these folders).

    ``POSIX_FADV_DONTNEED`` drops clean, unmapped pages: enough for a cold first read without
    root rights or dropping the whole machine's cache.
    """
    for root in paths:
        files = [root] if Path(root).is_file() else [p for p in Path(root).rglob("*") if p.is_file()]
        for p in files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
