"""Phased biallelic sites from in-memory arrays (tests, simulations, users' own loaders)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import numpy as np

from vcfstore.errors import InputError
from vcfstore.sources.base import SiteBlock
from vcfstore.sources.policy import InputPolicy, RecordFilter

_HASH_BYTES = 8 << 20  # alleles hashed at a time by describe()


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
        # Row blocks hash the same bytes as the whole array would, without a copy of it in memory
        # (a memory-mapped panel of many GB would otherwise be read into RAM whole).
        rows = max(1, _HASH_BYTES // max(1, self.alleles.shape[1]))
        for s in range(0, len(self.alleles), rows):
            h.update(np.ascontiguousarray(self.alleles[s : s + rows]).data)
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
