"""Phased sites from a VCF or BCF file (plain, gzip or BGZF), read with cyvcf2/htslib.

A BGZF file (``.vcf.gz``, ``.bgz``, compressed BCF) cut exactly at a block boundary reads as a
valid, shorter file, so its end-of-file marker is checked before anything is read. A plain
gzip file cut anywhere fails in htslib's inflate (its stream lacks the end and the CRC trailer),
which the reader reports as a truncated file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vcfstore._fileio import file_sha256
from vcfstore.errors import InputError
from vcfstore.sources.base import SiteBlock
from vcfstore.sources.policy import InputPolicy, RecordFilter

# The 28-byte empty block every BGZF writer (htslib, bgzip, pysam) ends a file with (SAM spec 4.1.2).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


class VcfSource:
    """Phased sites from a VCF or BCF file (plain, gzip or BGZF), read with cyvcf2/htslib.

    Parameters
    ----------
    path : path-like
        The VCF/BCF file.
    region : str, optional
        ``chr:start-end`` (needs a .tbi/.csi index beside the file).
    policy : InputPolicy
        What to do with records that are not phased, complete, biallelic SNVs.
    af_field : str
        INFO field read when the allele frequency comes from the input (``--af-from info``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        region: str | None = None,
        policy: InputPolicy | None = None,
        af_field: str = "AF",
    ) -> None:
        self.path = Path(path)
        self.region = region
        self.policy = policy or InputPolicy()
        self.af_field = af_field
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        check_bgzf_end(self.path)
        vcf = self._open()
        self.samples = list(vcf.samples)
        vcf.close()
        if not self.samples:
            raise InputError(f"{self.path}: the file has no samples (no genotype columns)")
        self.filter = RecordFilter(self.policy)

    def _open(self):
        from cyvcf2 import VCF

        try:
            return VCF(str(self.path), lazy=True)
        except Exception as e:  # noqa: BLE001 - cyvcf2 raises bare Exception for a bad header
            raise InputError(f"{self.path}: not a readable VCF/BCF file ({e})") from None

    def describe(self) -> dict[str, object]:
        """Name, size and checksum of the input, recorded in the store's attributes."""
        return {
            "kind": "vcf",
            "name": self.path.name,
            "size": self.path.stat().st_size,
            "sha256": file_sha256(self.path),
            "region": self.region,
        }

    def expected_records(self) -> int | None:
        """The number of records, when an index says so without a pass over the file."""
        # Without an index htslib prints "could not retrieve index" on stderr before giving up.
        if self.region is not None or not any(Path(f"{self.path}{ext}").is_file() for ext in (".tbi", ".csi")):
            return None
        try:
            vcf = self._open()
            n = vcf.num_records
            vcf.close()
            return int(n)
        except Exception:  # noqa: BLE001 - no index, or a format without counts: no total
            return None

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        """Yield blocks of at most about ``block_sites`` records' sites, in file order."""
        vcf = self._open()
        records = vcf(self.region) if self.region else vcf
        buf: list[tuple] = []
        try:
            for rec in records:
                genotype = rec.genotype  # a new object at every access: read it once
                if genotype is None:
                    raise InputError(f"record {rec.CHROM}:{rec.POS} has no GT field")
                gt = genotype.array()
                af = rec.INFO.get(self.af_field)
                buf.append((rec.CHROM, rec.POS, rec.ID or ".", rec.REF, rec.ALT, gt, af))
                if len(buf) >= block_sites:
                    yield self._filter(buf)
                    buf = []
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - htslib reports truncation and corruption as bare Exception
            raise InputError(f"{self.path}: the file is truncated or corrupt ({e})") from None
        finally:
            vcf.close()
        if buf:
            yield self._filter(buf)
        if self.filter.counts["records"] == 0:
            raise InputError(
                f"{self.path}: the file has no variant records" + (f" in {self.region}" if self.region else "")
            )

    def _filter(self, buf: list[tuple]) -> SiteBlock:
        contigs, positions, ids, refs, alts, gts, afs = zip(*buf, strict=True)
        ploidies = {g.shape[1] - 1 for g in gts}
        if len(ploidies) > 1 or ploidies != {2}:
            bad = next(i for i, g in enumerate(gts) if g.shape[1] != 3)
            raise InputError(
                f"record {contigs[bad]}:{positions[bad]} is not diploid for every sample (mixed or other ploidy)"
            )
        arr = np.stack(gts)
        return self.filter(contigs, positions, ids, refs, alts, arr[:, :, :2], arr[:, :, 2].astype(bool), afs)


def check_bgzf_end(path: Path) -> None:
    """Refuse a BGZF file without the end-of-file marker (truncated, or still being written).

    Files that are not BGZF (plain text, plain gzip, uncompressed BCF) pass unchecked.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(18)
            # gzip magic, deflate, FEXTRA set, and the "BC" subfield of a BGZF block header
            if head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC":
                return
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - len(BGZF_EOF), 0))
            tail = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror})") from None
    if tail != BGZF_EOF:
        raise InputError(
            f"{path}: the file is truncated or corrupt: it is BGZF-compressed but lacks the BGZF end-of-file "
            "marker (a copy cut short, or a file still being written)"
        )
