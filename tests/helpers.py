"""Helpers shared by the tests: where things are, and small VCF writers."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "1kg_chr20_eur"


def write_vcf(
    path: Path,
    records: Sequence[tuple],
    samples: Sequence[str] = ("S1", "S2"),
    *,
    header_extra: str = "",
) -> Path:
    """Write a small VCF (gzip if the name ends in .gz).

    Each record is (chrom, pos, id, ref, alt, [GT per sample]) or with a 7th INFO string.
    """
    lines = [
        "##fileformat=VCFv4.2",
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##INFO=<ID=AF,Number=A,Type=Float,Description="Allele Frequency">',
    ]
    lines += [f"##contig=<ID={c}>" for c in dict.fromkeys(str(r[0]) for r in records)]
    if header_extra:
        lines.append(header_extra)
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO"]
    lines.append("\t".join(columns + (["FORMAT", *samples] if samples else [])))
    for r in records:
        chrom, pos, vid, ref, alt, gts = r[:6]
        info = r[6] if len(r) > 6 else "."
        lines.append("\t".join([str(chrom), str(pos), vid, ref, alt, ".", "PASS", info, "GT", *gts]))
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def vcf_from_arrays(path: Path, alleles: np.ndarray, positions: np.ndarray, contig: str = "1") -> Path:
    """A phased, gzipped VCF of a simulated panel (alleles [n_haplotypes, n_sites]), written fast.

    Genotype columns are laid out as bytes with NumPy (``a|b<TAB>`` per sample), so panels of
    thousands of haplotypes take seconds, not minutes.
    """
    n_hap, n_sites = alleles.shape
    header_file = write_vcf(path.with_suffix(".header"), [], [f"s{i}" for i in range(n_hap // 2)])
    header = header_file.read_text().replace("#CHROM", f"##contig=<ID={contig}>\n#CHROM")
    header_file.unlink()
    cells = np.empty((n_sites, n_hap // 2, 4), dtype=np.uint8)
    cells[:, :, 0] = alleles[0::2].T + ord("0")
    cells[:, :, 1] = ord("|")
    cells[:, :, 2] = alleles[1::2].T + ord("0")
    cells[:, :, 3] = ord("\t")
    cells[:, -1, 3] = ord("\n")
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header.encode())
        for i in range(n_sites):
            f.write(f"{contig}\t{int(positions[i])}\tv{i}\tA\tG\t.\tPASS\t.\tGT\t".encode())
            f.write(cells[i].tobytes())
    return path
