"""Bytes on disk and read time of the panel store against the alternatives, side by side.

    python -m benchmarks.storage_layout [--quick]

Panels: an msprime panel of the real shape's haplotype count (2008 haplotypes) and the real
1000 Genomes chr20 reference (600 haplotypes, 23,670 SNVs). For each: raw int64 tokens (what
the original design keeps in RAM), raw uint8, raw bit-packed, bit-packed + Zstd at several chunk
shapes, uint8 + Blosc bit-shuffle, bio2zarr's ``vcf2zarr`` output of the same VCF, and the
vcfstore store as built by default; then the read time of a whole window (unpacked and packed)
and of a 16-row gather for vcfstore and vcf2zarr; and the bytes and compression time of the
store's allele chunks at several Zstd levels. Larger panels (20,000 to 1,000,000
haplotypes): ``python -m benchmarks.scale``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import vcfstore as vs
from vcfstore.simulate import TreeSequenceSource, simulate_panel
from vcfstore.store.builder import DEFAULT_CHUNK_SITES, DEFAULT_HAPLOTYPE_CHUNK, DEFAULT_ZSTD_LEVEL
from vcfstore.testing import best_time

from .common import REAL_DATA, dir_bytes, write_result

DEFAULT_LABEL = (
    f"vcfstore default (shards of all haplotypes x {DEFAULT_CHUNK_SITES} sites, "
    f"inner chunks of {DEFAULT_HAPLOTYPE_CHUNK} haplotypes, Zstd {DEFAULT_ZSTD_LEVEL})"
)


def _zarr_variant(path: Path, data: np.ndarray, chunks: tuple[int, int], codec: Any) -> int:
    import zarr

    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=[codec])
    arr[:] = data
    return dir_bytes(path)


def _vcf_for(store: vs.PanelStore, path: Path) -> Path:
    """Write the store's panel as a BGZF VCF with cyvcf2 (for vcf2zarr), streaming by window."""
    import gzip

    with gzip.open(path, "wt", compresslevel=1) as f:
        f.write("##fileformat=VCFv4.2\n##contig=<ID=1>\n")
        f.write('##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')
        f.write("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *store.samples]))
        f.write("\n")
        table = store.site_table()
        step = 4096
        for start in range(0, store.n_sites, step):
            a = store.read_alleles(start, min(start + step, store.n_sites)).T
            for i, row in enumerate(a):
                s = start + i
                gts = "\t".join(f"{x}|{y}" for x, y in zip(row[0::2], row[1::2], strict=True))
                f.write(f"{table['contig'][s]}\t{table['position'][s]}\t.\t{table['ref'][s]}\t{table['alt'][s]}")
                f.write(f"\t.\t.\t.\tGT\t{gts}\n")
    return path


# Zstd levels compared on the default layout's allele chunks (the store's own default among them).
ZSTD_LEVELS = (3, 7, 9, 10, 11, 12, 13, 15)


def zstd_levels(store: vs.PanelStore) -> dict[int, dict[str, float]]:
    """Bytes and seconds (one thread) to compress the store's allele chunks at each of ZSTD_LEVELS."""
    import time

    import zarr
    from numcodecs import Zstd

    alleles = zarr.open_group(str(store.path), mode="r")["alleles"]
    packed, (rows, cols) = np.asarray(alleles[:]), alleles.chunks
    chunks = [
        np.ascontiguousarray(packed[i : i + rows, j : j + cols])
        for i in range(0, packed.shape[0], rows)
        for j in range(0, packed.shape[1], cols)
    ]
    out = {}
    for level in ZSTD_LEVELS:
        codec = Zstd(level=level)
        start = time.process_time()
        size = sum(len(codec.encode(c)) for c in chunks)
        out[level] = {"bytes": size, "seconds": time.process_time() - start}
    return out


def measure_panel(name: str, store: vs.PanelStore, vcf: Path | None, work: Path) -> dict[str, Any]:
    from bio2zarr import vcf as b2z
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    alleles = store.read_alleles(0, store.n_sites)
    n_hap, n_sites = alleles.shape
    genotypes = n_hap * n_sites
    packed = np.packbits(alleles, axis=1)
    bits: dict[str, float] = {
        "int64 tokens, raw (original design)": 64.0,
        "uint8, raw": 8.0,
        "bit-packed, raw": packed.nbytes * 8 / genotypes,
    }
    zstd = ZstdCodec(level=DEFAULT_ZSTD_LEVEL)
    variants = {
        "uint8, sites x 1024, Blosc-zstd bitshuffle": (
            alleles,
            (n_hap, 1024),
            BloscCodec(cname="zstd", clevel=5, shuffle=BloscShuffle.bitshuffle),
        ),
        "bit-packed, 256 haplotypes x 1024 sites, Zstd": (packed, (256, 128), zstd),
        "bit-packed, all haplotypes x 1024 sites, Zstd": (packed, (n_hap, 128), zstd),
        "bit-packed, all haplotypes x 4096 sites, Zstd": (packed, (n_hap, 512), zstd),
    }
    for label, (data, chunks, codec) in variants.items():
        path = work / name.replace(" ", "_") / label.replace(" ", "_").replace(",", "")
        bits[label] = _zarr_variant(path, data, chunks, codec) * 8 / genotypes
    bits[DEFAULT_LABEL] = store.disk_usage()["alleles"] * 8 / genotypes

    vcf = vcf or _vcf_for(store, work / f"{name}.vcf.gz")
    vcz = work / f"{name}.vcz"
    b2z.convert([str(vcf)], str(vcz))
    gt_bytes = dir_bytes(vcz / "call_genotype")
    bits["vcf2zarr call_genotype (default layout)"] = gt_bytes * 8 / genotypes

    # Read times: the middle window, whole and a 16-row gather, from each store.
    import zarr

    w = store.n_windows // 2
    sites = store.window_sites(w)
    rows = np.sort(np.random.default_rng(0).choice(n_hap, 16, replace=False))
    gt = zarr.open_group(str(vcz), mode="r")["call_genotype"]
    samples = np.unique(rows // 2)
    reads_ms = {
        "vcfstore whole window": best_time(lambda: store.window_alleles(w)) * 1e3,
        "vcfstore whole window, packed": best_time(lambda: store.window_packed(w)) * 1e3,
        "vcfstore 16-row gather": best_time(lambda: store.window_alleles(w, rows)) * 1e3,
        "vcf2zarr whole window": best_time(lambda: gt[sites.start : sites.stop]) * 1e3,
        "vcf2zarr 16-row gather": best_time(lambda: gt.oindex[sites.start : sites.stop, samples]) * 1e3,
    }
    return {
        "panel": name,
        "n_haplotypes": n_hap,
        "n_sites": n_sites,
        "window_sites": len(sites),
        "bits_per_genotype": bits,
        "bytes_per_1030_site_window": {k: v * n_hap * 1030 / 8 for k, v in bits.items()},
        "vcfstore_over_vcf2zarr": bits[DEFAULT_LABEL] / bits["vcf2zarr call_genotype (default layout)"],
        "read_ms": reads_ms,
        "zstd_levels": zstd_levels(store),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small simulated panel only (seconds)")
    ap.add_argument("--out", type=Path, default=None, help="directory for the JSON result")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    results = []
    with tempfile.TemporaryDirectory(prefix="vcfstore-bench-") as tmp:
        work = Path(tmp)
        n, length = (200, 1e6) if args.quick else (1004, 10e6)
        sim = vs.build_store(
            TreeSequenceSource(simulate_panel(n, length, seed=1)), work / "sim.vcfstore", progress=False
        )
        results.append(measure_panel(f"msprime {2 * n} haplotypes", sim, None, work))
        if not args.quick and (REAL_DATA / "reference.vcf.gz").is_file():
            real_vcf = REAL_DATA / "reference.vcf.gz"
            real = vs.build_store(vs.VcfSource(real_vcf), work / "real.vcfstore", progress=False)
            results.append(measure_panel("1000G chr20 EUR reference", real, real_vcf, work))
        shutil.rmtree(work, ignore_errors=True)

    console = Console()
    labels = list(results[0]["bits_per_genotype"])
    table = Table(title="bits per genotype on disk (lower is better)")
    table.add_column("layout")
    for r in results:
        table.add_column(f"{r['panel']}\n({r['n_haplotypes']} x {r['n_sites']:,})", justify="right")
    for label in labels:
        table.add_row(label, *(f"{r['bits_per_genotype'][label]:.4f}" for r in results))
    table.add_row("vcfstore / vcf2zarr", *(f"{r['vcfstore_over_vcf2zarr']:.2f}" for r in results))
    console.print(table)
    reads = Table(title="read time of one window (best of 7, ms)")
    reads.add_column("read")
    for r in results:
        reads.add_column(r["panel"], justify="right")
    for label in results[0]["read_ms"]:
        reads.add_row(label, *(f"{r['read_ms'][label]:.2f}" for r in results))
    console.print(reads)
    levels = Table(title=f"Zstd level of the allele chunks (default {DEFAULT_ZSTD_LEVEL}): bytes, and CPU seconds")
    levels.add_column("level")
    for r in results:
        levels.add_column(f"{r['panel']} bytes", justify="right")
        levels.add_column("seconds", justify="right")
    for level in ZSTD_LEVELS:
        cells = []
        for r in results:
            z = r["zstd_levels"][level]
            cells += [f"{z['bytes']:,}", f"{z['seconds']:.3f}"]
        levels.add_row(str(level), *cells)
    console.print(levels)
    result = {"benchmark": "storage_layout", "quick": args.quick, "panels": results}
    path = write_result("storage_layout" + ("_quick" if args.quick else ""), result, args.out)
    console.print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
