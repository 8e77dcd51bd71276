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


def simulated_vcf(work: Path, n_haplotypes: int, length: float, *, indexed: bool = False) -> Path:
    """An msprime panel (seed 5) as ``work/sim.vcf.gz``; ``indexed``: bgzipped by pysam with a tabix index."""
    import numpy as np

    from tests.helpers import vcf_from_arrays
    from vcfstore.simulate import simulate_panel

    ts = simulate_panel(n_haplotypes // 2, length, seed=5)
    alleles = ts.genotype_matrix().T.astype(np.uint8)
    positions = ts.tables.sites.position.astype(np.int64) + 1
    gz = vcf_from_arrays(work / "sim.vcf.gz", alleles, positions)
    if not indexed:
        return gz
    import gzip
    import shutil

    import pysam

    plain = work / "sim.vcf"
    with gzip.open(gz, "rb") as src, open(plain, "wb") as dst:
        shutil.copyfileobj(src, dst)
    gz.unlink()
    return Path(pysam.tabix_index(str(plain), preset="vcf", force=True))


def vcf_panels(
    work: Path, quick: bool, sim: tuple[int, float], quick_sim: tuple[int, float], *, indexed: bool = False
) -> list[tuple[str, Path, int, Path]]:
    """The panels of the ingest benchmarks: (name, VCF, haplotypes, a fresh work folder) for each.

    The real chr20 reference (unless ``quick`` or absent) and an msprime panel of ``sim`` (or
    ``quick_sim``) haplotypes and sequence length.
    """
    panels = []
    real = REAL_DATA / "reference.vcf.gz"
    if real.is_file() and not quick:
        panels.append(("1000G chr20 reference, 600 haplotypes", real, 600))
    n_hap, length = quick_sim if quick else sim
    panels.append((f"msprime, {n_hap:,} haplotypes", simulated_vcf(work, n_hap, length, indexed=indexed), n_hap))
    out = []
    for name, vcf, haps in panels:
        sub = work / name.split(",")[0].replace(" ", "_")
        sub.mkdir()
        out.append((name, vcf, haps, sub))
    return out
