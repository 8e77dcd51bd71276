"""Streaming readers that turn an input panel into blocks of phased biallelic sites.

Every source yields :class:`SiteBlock` objects of at most ``block_sites`` sites, so the builder
never holds the whole panel. VCF/BCF (through cyvcf2, i.e. htslib) and VCF Zarr (bio2zarr's
``vcf2zarr`` layout) go through the same :class:`RecordFilter`, which applies the input policy
(multiallelic, non-SNV, unphased, missing, duplicates) and the ordering checks in one place.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import InputError

_MISSING = -1  # htslib and vcf2zarr: a missing allele
_VECTOR_END = -2  # htslib and vcf2zarr: padding of a call with fewer alleles than the maximum


@dataclass
class SiteBlock:
    """Consecutive sites, each with its phased 0/1 alleles for every haplotype.

    ``alleles`` is uint8 [n_sites, n_haplotypes]; haplotype ``h`` belongs to sample ``h // 2``.
    ``info_af`` is the input's own allele frequency per site (NaN where it has none) or None.
    """

    contigs: list[str]
    positions: np.ndarray
    ids: list[str]
    refs: list[str]
    alts: list[str]
    alleles: np.ndarray
    info_af: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def slice(self, start: int, stop: int | None = None) -> SiteBlock:
        sl = slice(start, stop)
        return SiteBlock(
            self.contigs[sl],
            self.positions[sl],
            self.ids[sl],
            self.refs[sl],
            self.alts[sl],
            self.alleles[sl],
            None if self.info_af is None else self.info_af[sl],
        )


@dataclass(frozen=True)
class InputPolicy:
    """What to do with records that are not phased, complete, biallelic SNVs.

    Parameters
    ----------
    multiallelic : {"skip", "split"}
        Skip records with several ALT alleles, or split them into one biallelic site per ALT
        (the haplotypes carrying that ALT get 1, every other haplotype 0).
    non_snv : {"skip", "keep"}
        Skip indels and symbolic alleles, or keep them as ordinary biallelic sites.
    unphased : {"error", "skip-site", "keep"}
        A heterozygous call written unphased (``0/1``) stops the build (naming the record), drops
        the site, or is kept in the written allele order. Unphased homozygous calls are
        unambiguous and always accepted.
    missing : {"error", "skip-site", "ref"}
        A missing allele (``.``) stops the build, drops the site, or is read as REF.
    duplicates : {"error", "skip"}
        A second record at the same position stops the build or is dropped (the first is kept).
    """

    multiallelic: Literal["skip", "split"] = "skip"
    non_snv: Literal["skip", "keep"] = "skip"
    unphased: Literal["error", "skip-site", "keep"] = "error"
    missing: Literal["error", "skip-site", "ref"] = "error"
    duplicates: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        choices = {
            "multiallelic": ("skip", "split"),
            "non_snv": ("skip", "keep"),
            "unphased": ("error", "skip-site", "keep"),
            "missing": ("error", "skip-site", "ref"),
            "duplicates": ("error", "skip"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"{name} policy must be one of {allowed}, not {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


@dataclass
class RecordFilter:
    """Applies an :class:`InputPolicy` and the ordering checks to blocks of raw records.

    Raw records come as parallel lists plus ``gt`` int [n, n_samples, ploidy] with htslib's
    codes (-1 missing, -2 vector end) and ``phased`` bool [n, n_samples].
    """

    policy: InputPolicy
    counts: Counter[str] = field(default_factory=Counter)
    _contig: str | None = None
    _last_pos: int = -1
    _last_kept_pos: int = -1
    _done_contigs: set[str] = field(default_factory=set)

    def __call__(
        self,
        contigs: Sequence[str],
        positions: Sequence[int],
        ids: Sequence[str],
        refs: Sequence[str],
        alts: Sequence[Sequence[str]],
        gt: np.ndarray,
        phased: np.ndarray,
        info_af: Sequence[Sequence[float] | None] | None,
    ) -> SiteBlock:
        n = len(positions)
        if gt.ndim != 3 or gt.shape[0] != n:
            raise InputError(f"genotype block has shape {gt.shape}; expected ({n}, n_samples, 2)")
        missing = (gt == _MISSING).any(axis=(1, 2))
        unphased_het = (~phased & (gt[:, :, 0] != gt[:, :, -1])).any(axis=1)
        self.counts["unphased_homozygous_calls"] += int((~phased & (gt[:, :, 0] == gt[:, :, -1])).sum())
        out_rows: list[tuple[int, int]] = []  # (record index, ALT number)
        for i in range(n):
            self.counts["records"] += 1
            where = f"{contigs[i]}:{positions[i]}" + (f" ({ids[i]})" if ids[i] not in ("", ".") else "")
            self._check_order(contigs[i], int(positions[i]), where)
            if gt.shape[2] != 2 or (gt[i] == _VECTOR_END).any():
                raise InputError(f"record {where} is not diploid for every sample (mixed or other ploidy)")
            alt_numbers = self._alt_numbers(refs[i], alts[i])
            if not alt_numbers:
                continue
            if int(positions[i]) == self._last_kept_pos:
                if self.policy.duplicates == "error":
                    raise InputError(f"record {where} repeats the position of an earlier site (duplicate position)")
                self.counts["skipped_duplicate"] += 1
                continue
            if missing[i]:
                if self.policy.missing == "error":
                    raise InputError(f"record {where} has missing genotypes; choose a --missing policy")
                if self.policy.missing == "skip-site":
                    self.counts["skipped_missing"] += 1
                    continue
                self.counts["missing_read_as_ref"] += 1
            if unphased_het[i]:
                if self.policy.unphased == "error":
                    raise InputError(
                        f"record {where} has unphased heterozygous genotypes; "
                        "vcfstore needs phased haplotypes (choose an --unphased policy)"
                    )
                if self.policy.unphased == "skip-site":
                    self.counts["skipped_unphased"] += 1
                    continue
                self.counts["unphased_kept"] += 1
            self._last_kept_pos = int(positions[i])
            out_rows.extend((i, k) for k in alt_numbers)
        return self._block(contigs, positions, ids, refs, alts, gt, info_af, out_rows)

    def _check_order(self, contig: str, pos: int, where: str) -> None:
        if contig != self._contig:
            if contig in self._done_contigs:
                raise InputError(f"record {where}: contig {contig} appears again after other contigs (unsorted input)")
            if self._contig is not None:
                self._done_contigs.add(self._contig)
            self._contig, self._last_pos, self._last_kept_pos = contig, -1, -1
        if pos < self._last_pos:
            raise InputError(f"record {where} comes after position {self._last_pos}: positions are not sorted")
        self._last_pos = pos

    def _alt_numbers(self, ref: str, alts: Sequence[str]) -> list[int]:
        """The ALT numbers (1-based) that become sites of this record, counting what is skipped."""
        alts = [a for a in alts if a not in ("", ".")]
        if not alts:
            self.counts["skipped_no_alt"] += 1
            return []
        if len(alts) > 1 and self.policy.multiallelic == "skip":
            self.counts["skipped_multiallelic"] += 1
            return []
        keep = [k + 1 for k, a in enumerate(alts) if self.policy.non_snv == "keep" or _is_snv(ref, a)]
        if not keep:
            self.counts["skipped_non_snv"] += 1
            return []
        if len(alts) > 1:
            self.counts["split_multiallelic"] += 1
        return keep

    def _block(self, contigs, positions, ids, refs, alts, gt, info_af, rows) -> SiteBlock:
        n_hap = gt.shape[1] * 2
        if not rows:
            return SiteBlock([], np.zeros(0, np.int64), [], [], [], np.zeros((0, n_hap), np.uint8), None)
        idx = np.fromiter((r for r, _ in rows), dtype=np.int64, count=len(rows))
        alt_no = np.fromiter((k for _, k in rows), dtype=np.int16, count=len(rows))
        alleles = (gt[idx].reshape(len(rows), n_hap) == alt_no[:, None]).astype(np.uint8)
        af = None
        if info_af is not None:
            af = np.array([_info_af_value(info_af[r], k) for r, k in rows], dtype=np.float32)
        self.counts["sites"] += len(rows)
        return SiteBlock(
            [contigs[r] for r, _ in rows],
            np.asarray(positions, dtype=np.int64)[idx],
            [ids[r] for r, _ in rows],
            [refs[r] for r, _ in rows],
            [alts[r][k - 1] for r, k in rows],
            alleles,
            af,
        )


def _is_snv(ref: str, alt: str) -> bool:
    return len(ref) == 1 and len(alt) == 1 and alt.upper() in "ACGT" and ref.upper() in "ACGTN"


def _info_af_value(values: Sequence[float] | float | None, alt_number: int) -> float:
    if values is None:
        return float("nan")
    if np.isscalar(values):
        return float(values) if alt_number == 1 else float("nan")
    return float(values[alt_number - 1]) if alt_number <= len(values) else float("nan")


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
            "sha256": file_digest(self.path),
            "region": self.region,
        }

    def expected_records(self) -> int | None:
        """The number of records, when an index says so without a pass over the file."""
        if self.region is not None:
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
                gt = rec.genotype.array() if rec.genotype is not None else None
                if gt is None:
                    raise InputError(f"record {rec.CHROM}:{rec.POS} has no GT field")
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


class VcfZarrSource:
    """Phased sites from a VCF Zarr store (the layout bio2zarr's ``vcf2zarr`` writes).

    Reads ``call_genotype``, ``call_genotype_phased``, ``variant_position``, ``variant_contig``,
    ``contig_id``, ``variant_allele``, ``variant_id`` and ``sample_id`` in variant chunks. The
    frequency comes from ``variant_AF`` when the allele frequency is taken from the input.
    """

    def __init__(self, path: str | os.PathLike[str], *, policy: InputPolicy | None = None) -> None:
        import zarr

        self.path = Path(path)
        try:
            self.root = zarr.open_group(str(self.path), mode="r")
            self.samples = [str(s) for s in self.root["sample_id"][:]]
            self._gt = self.root["call_genotype"]
        except Exception as e:  # noqa: BLE001 - any failure here means "not a VCF Zarr store"
            raise InputError(f"{self.path}: not a VCF Zarr store ({e})") from None
        if self._gt.ndim != 3 or self._gt.shape[2] != 2:
            raise InputError(f"{self.path}: call_genotype has shape {self._gt.shape}; vcfstore needs diploid calls")
        self.policy = policy or InputPolicy()
        self.filter = RecordFilter(self.policy)

    def describe(self) -> dict[str, object]:
        meta = sorted(p for p in self.path.rglob("zarr.json"))
        h = hashlib.sha256()
        for p in meta:  # metadata identifies the store; hashing every chunk would read the panel twice
            h.update(p.read_bytes())
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {"kind": "vcf-zarr", "name": self.path.name, "size": size, "sha256": h.hexdigest()}

    def expected_records(self) -> int | None:
        return int(self._gt.shape[0])

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        r = self.root
        contig_names = [str(c) for c in r["contig_id"][:]]
        n = self._gt.shape[0]
        if n == 0:
            raise InputError(f"{self.path}: the store has no variants")
        has_af = "variant_AF" in r
        for start in range(0, n, block_sites):
            sl = slice(start, min(start + block_sites, n))
            alleles = r["variant_allele"][sl]
            phased = (
                r["call_genotype_phased"][sl] if "call_genotype_phased" in r else np.ones(self._gt[sl].shape[:2], bool)
            )
            yield self.filter(
                [contig_names[c] for c in r["variant_contig"][sl]],
                r["variant_position"][sl].tolist(),
                [str(x) for x in r["variant_id"][sl]] if "variant_id" in r else ["."] * (sl.stop - start),
                [str(a[0]) for a in alleles],
                [[str(x) for x in a[1:] if str(x)] for a in alleles],
                self._gt[sl].astype(np.int16),
                phased,
                [np.atleast_1d(x).tolist() for x in r["variant_AF"][sl]] if has_af else None,
            )


class ArraySource:
    """Sites from in-memory arrays (tests, simulations, users' own loaders).

    Parameters
    ----------
    alleles : array [n_haplotypes, n_sites] of 0/1
        Phased alleles; haplotype ``h`` belongs to sample ``h // 2``.
    positions : array [n_sites] of int
        1-based positions, sorted within each contig.
    contigs : str or sequence of str
        One contig for every site, or a per-site sequence.
    samples, ids, refs, alts : sequences, optional
        Defaults: ``sample0 ...``, ``.``, ``A``, ``C``.
    """

    def __init__(
        self,
        alleles: np.ndarray,
        positions: np.ndarray,
        *,
        contigs: str | Sequence[str] = "1",
        samples: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        refs: Sequence[str] | None = None,
        alts: Sequence[str] | None = None,
    ) -> None:
        alleles = np.asarray(alleles)
        if alleles.ndim != 2:
            raise InputError(f"alleles must be 2-D [n_haplotypes, n_sites], got shape {alleles.shape}")
        n_hap, n_sites = alleles.shape
        if n_hap == 0 or n_hap % 2:
            raise InputError(f"alleles has {n_hap} haplotypes; need an even, non-zero number (2 per sample)")
        if n_sites == 0:
            raise InputError("alleles has no sites")
        if alleles.dtype == bool:
            alleles = alleles.view(np.uint8)
        if not np.issubdtype(alleles.dtype, np.integer) or alleles.min() < 0 or alleles.max() > 1:
            raise InputError("alleles must hold only 0 (REF) and 1 (ALT)")
        positions = np.asarray(positions, dtype=np.int64)
        if positions.shape != (n_sites,):
            raise InputError(f"positions has shape {positions.shape}; expected ({n_sites},)")
        self.alleles = alleles.astype(np.uint8, copy=False)
        self.positions = positions
        self.contigs = [contigs] * n_sites if isinstance(contigs, str) else list(contigs)
        self.samples = list(samples) if samples is not None else [f"sample{i}" for i in range(n_hap // 2)]
        self.ids = list(ids) if ids is not None else ["."] * n_sites
        self.refs = list(refs) if refs is not None else ["A"] * n_sites
        self.alts = list(alts) if alts is not None else ["C"] * n_sites
        for name, seq, want in (
            ("contigs", self.contigs, n_sites),
            ("samples", self.samples, n_hap // 2),
            ("ids", self.ids, n_sites),
            ("refs", self.refs, n_sites),
            ("alts", self.alts, n_sites),
        ):
            if len(seq) != want:
                raise InputError(f"{name} has {len(seq)} entries; expected {want}")
        # The caller chose these sites: keep every one, whatever its REF/ALT strings.
        self.policy = InputPolicy(non_snv="keep")
        self.filter = RecordFilter(self.policy)

    def describe(self) -> dict[str, object]:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.alleles).tobytes())
        h.update(self.positions.tobytes())
        h.update("\t".join(self.contigs + self.samples).encode())
        return {"kind": "arrays", "name": "arrays", "size": int(self.alleles.nbytes), "sha256": h.hexdigest()}

    def expected_records(self) -> int:
        return len(self.positions)

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        n_sites = len(self.positions)
        for start in range(0, n_sites, block_sites):
            sl = slice(start, min(start + block_sites, n_sites))
            yield haplotype_block(
                self.filter,
                self.contigs[sl],
                self.positions[sl],
                self.ids[sl],
                self.refs[sl],
                self.alts[sl],
                self.alleles[:, sl].T,
            )


def haplotype_block(
    flt: RecordFilter,
    contigs: Sequence[str],
    positions: np.ndarray,
    ids: Sequence[str],
    refs: Sequence[str],
    alts: Sequence[str],
    alleles: np.ndarray,
) -> SiteBlock:
    """Run phased biallelic sites given as alleles [n_sites, n_haplotypes] through a filter."""
    gt = alleles.astype(np.int16).reshape(len(positions), -1, 2)
    phased = np.ones(gt.shape[:2], dtype=bool)
    return flt(contigs, np.asarray(positions).tolist(), ids, refs, [[a] for a in alts], gt, phased, None)


SiteSource = VcfSource | VcfZarrSource | ArraySource


def open_source(
    path: str | os.PathLike[str], *, region: str | None = None, policy: InputPolicy | None = None
) -> VcfSource | VcfZarrSource:
    """A site source for a VCF/BCF file, or for a VCF Zarr directory."""
    path = Path(path)
    if path.is_dir():
        if region:
            raise InputError("a region works on indexed VCF/BCF files, not on VCF Zarr stores")
        return VcfZarrSource(path, policy=policy)
    return VcfSource(path, region=region, policy=policy)
