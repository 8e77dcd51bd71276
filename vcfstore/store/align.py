"""A target cohort aligned to a reference panel store, site by site (the imputation case).

A target (the cohort to impute: a panel store, a VCF/BCF file, a VCF Zarr store or any site
source) is matched to the reference's sites by (contig, position, REF, ALT):

* contig names are matched exactly, then without a ``chr`` prefix (``chr20`` = ``20``,
  ``chrM`` = ``MT``), then through ``contig_aliases``;
* a target site with REF and ALT swapped is recoded (its alleles flipped, its AF ``1 - AF``);
* reference sites the target lacks are *missing*: masked for every target haplotype;
* target sites the reference lacks (another position, another contig) are dropped, and so are
  target sites at a reference position whose alleles match no reference site there (counted
  as allele mismatches); alleles are compared as written (no strand flips, no normalisation);
* a target genotype that is missing in the input (``.``, read with ``missing="mask"``) is
  masked for that haplotype only.

The :class:`AlignmentReport` counts each case; an alignment in which fewer than
``min_matched_fraction`` of the target's sites find their reference site (the wrong genome
build, the wrong reference) is an :class:`InputError`. :class:`AlignedTarget` then serves, per
reference window, the target's alleles in reference coding and the mask of what is missing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore.errors import ArgumentError, InputError, StoreError
from vcfstore.sources import InputPolicy, SiteSource, open_source
from vcfstore.store.reader import PanelStore, read_store_attrs

_POS_BITS = 40  # positions stay below 2**40; the contig index sits above them in one int64 key


@dataclass(frozen=True)
class AlignmentReport:
    """How a target's sites met the reference's sites.

    Every target site is counted once, as ``matched``, ``flipped``, ``allele_mismatch``,
    ``dropped`` or ``duplicate``; ``missing`` counts reference sites with no target site.
    """

    n_reference_sites: int
    n_target_sites: int
    matched: int  # same contig, position, REF and ALT
    flipped: int  # REF and ALT swapped: alleles recoded
    missing: int  # reference sites the target lacks (always masked)
    dropped: int  # target sites on a contig or at a position the reference lacks
    allele_mismatch: int  # at a reference position, but no reference site there has these alleles
    duplicate: int  # a second target site for a reference site already aligned (the first is kept)
    contigs: dict[str, str] = field(default_factory=dict)  # target contig -> reference contig
    unknown_contigs: list[str] = field(default_factory=list)  # target contigs the reference lacks

    @property
    def aligned(self) -> int:
        """Target sites that found their reference site (matched or flipped)."""
        return self.matched + self.flipped

    @property
    def matched_fraction(self) -> float:
        """The share of the target's sites that align (the threshold applies to this)."""
        return self.aligned / self.n_target_sites if self.n_target_sites else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "aligned": self.aligned, "matched_fraction": self.matched_fraction}

    def __str__(self) -> str:
        return (
            f"{self.aligned} of {self.n_target_sites} target sites aligned ({self.matched_fraction:.1%}: "
            f"{self.matched} matched, {self.flipped} flipped); {self.allele_mismatch} allele mismatches, "
            f"{self.dropped} not in the reference, {self.duplicate} duplicates; {self.missing} of "
            f"{self.n_reference_sites} reference sites missing from the target"
        )


class AlignedTarget:
    """A target cohort aligned to a reference store's sites and windows.

    Parameters
    ----------
    reference : PanelStore or path
        The reference panel store; its windows are the windows served here.
    target : PanelStore, path or site source
        A panel store (directory), a VCF/BCF file, a VCF Zarr directory, or a site source
        (e.g. :class:`~vcfstore.sources.VcfSource`, which brings its own policy).
    policy : InputPolicy, optional
        For a target given as a file: by default the reference's own policy with
        ``missing="mask"``, so the target is read the way the panel was and may have missing
        genotypes.
    contig_aliases : mapping, optional
        Target contig name -> reference contig name, used before the automatic matching.
    min_matched_fraction : float
        The smallest share of the target's sites that must align; below it the alignment is
        an :class:`InputError` naming the counts.
    block_sites : int
        Sites per block when streaming a file.

    Attributes
    ----------
    report : AlignmentReport
        The counts of the alignment.
    samples : array of str
        The target's samples; haplotype ``h`` belongs to sample ``h // 2``.
    n_haplotypes : int
        ``2 * len(samples)``.
    target_index : array [n_reference_sites] of int64
        Per reference site, the index of its target site in the target's site order, or -1.
    flipped : array [n_reference_sites] of bool
        Per reference site, whether the target has REF and ALT swapped there (recoded).

    Notes
    -----
    A target read from a file is kept in memory bit-packed (one bit per allele of each
    aligned site, one more per genotype-missing flag when any genotype is missing); while it
    is read, its aligned sites take two bytes per genotype. A store target is read lazily,
    window by window.
    """

    def __init__(
        self,
        reference: PanelStore | str | os.PathLike[str],
        target: PanelStore | SiteSource | str | os.PathLike[str],
        *,
        policy: InputPolicy | None = None,
        contig_aliases: Mapping[str, str] | None = None,
        min_matched_fraction: float = 0.5,
        block_sites: int = 4096,
    ) -> None:
        if not 0.0 <= min_matched_fraction <= 1.0:
            raise ArgumentError(f"min_matched_fraction must be in [0, 1], not {min_matched_fraction}")
        self.reference = reference if isinstance(reference, PanelStore) else PanelStore(reference)
        target = _open_target(target, policy, self.reference)
        n_ref = self.reference.n_sites
        matcher = SiteMatcher(self.reference.site_table(), self.reference.contigs, contig_aliases or {})
        self.target_index = np.full(n_ref, -1, dtype=np.int64)
        self.flipped = np.zeros(n_ref, dtype=bool)
        self.samples = np.asarray(target.samples)
        self.n_haplotypes = 2 * len(self.samples)
        self._store: PanelStore | None = None
        self._packed = np.zeros((self.n_haplotypes, 0), np.uint8)  # aligned sites of a file target
        self._missing_packed: np.ndarray | None = None
        self._af = np.zeros(0, np.float32)  # per aligned site, for a file target
        if isinstance(target, PanelStore):
            self._store = target
            t = target.site_table()
            tidx, ridx, flip = matcher.align(t["contig"], t["position"], t["ref"], t["alt"], 0)
            self.target_index[ridx], self.flipped[ridx] = tidx, flip
            n_target = target.n_sites
        else:
            n_target = self._read_source(target, matcher, block_sites)
        self._sites = np.flatnonzero(self.target_index >= 0)  # aligned reference sites, in reference order
        n_flipped = int(self.flipped.sum())
        self.report = AlignmentReport(
            n_reference_sites=n_ref,
            n_target_sites=n_target,
            matched=len(self._sites) - n_flipped,
            flipped=n_flipped,
            missing=n_ref - len(self._sites),
            dropped=matcher.counts["dropped"],
            allele_mismatch=matcher.counts["allele_mismatch"],
            duplicate=matcher.counts["duplicate"],
            contigs=dict(matcher.contigs.used),
            unknown_contigs=sorted(matcher.contigs.unknown),
        )
        if n_target == 0:
            raise InputError("the target has no sites")
        if self.report.matched_fraction < min_matched_fraction:
            unknown = self.report.unknown_contigs
            raise InputError(
                f"only {self.report}"
                + (f"; target contigs not in the reference: {', '.join(unknown)}" if unknown else "")
                + f" (below min_matched_fraction={min_matched_fraction}: another genome build or reference?)"
            )

    def __repr__(self) -> str:
        return f"AlignedTarget({self.n_haplotypes} haplotypes on {self.reference!r}: {self.report})"

    def _read_source(self, source: SiteSource, matcher: SiteMatcher, block_sites: int) -> int:
        """Stream a site source, keep its aligned sites (recoded), and pack them in reference order."""
        ref_sites, target_sites, flips, columns, gaps = [], [], [], [], []
        n_target = 0
        for block in source.blocks(block_sites):
            tidx, ridx, flip = matcher.align(block.contigs, block.positions, block.refs, block.alts, n_target)
            local = tidx - n_target
            n_target += len(block)
            miss = (
                block.missing[local]
                if block.missing is not None
                else np.zeros((len(local), self.n_haplotypes), dtype=bool)
            )
            alleles = block.alleles[local] ^ flip[:, None].astype(np.uint8)
            alleles[miss] = 0
            ref_sites.append(ridx)
            target_sites.append(tidx)
            flips.append(flip)
            columns.append(alleles)
            gaps.append(miss)
        if not ref_sites:
            return n_target
        ridx = np.concatenate(ref_sites)
        order = np.argsort(ridx)  # reference order (a target may list contigs or alleles differently)
        ridx = ridx[order]
        self.target_index[ridx] = np.concatenate(target_sites)[order]
        self.flipped[ridx] = np.concatenate(flips)[order]
        alleles = np.concatenate(columns)[order]
        miss = np.concatenate(gaps)[order]
        observed = (~miss).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._af = (alleles.sum(axis=1) / observed).astype(np.float32)  # NaN where nobody is observed
        self._packed = np.packbits(alleles.T, axis=1)
        self._missing_packed = np.packbits(miss.T, axis=1) if miss.any() else None
        return n_target

    # --- per site ----------------------------------------------------------------------------
    @property
    def site_missing(self) -> np.ndarray:
        """bool [n_reference_sites]: reference sites the target lacks (masked for every haplotype)."""
        return self.target_index < 0

    @property
    def af(self) -> np.ndarray:
        """float32 [n_reference_sites]: the target's ALT frequency in reference coding, NaN where missing.

        A store target gives its stored AF (``1 - AF`` where flipped); a file target the
        frequency among its observed (not missing) alleles.
        """
        out = np.full(self.reference.n_sites, np.nan, dtype=np.float32)
        if self._store is None:
            out[self._sites] = self._af
        else:
            af = self._store.af[self.target_index[self._sites]]
            out[self._sites] = np.where(self.flipped[self._sites], 1 - af, af)
        return out

    # --- per window --------------------------------------------------------------------------
    def window_sites(self, w: int) -> range:
        """The reference site indices of window ``w``."""
        return self.reference.window_sites(w)

    def window(self, w: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The target in reference window ``w``: (alleles, missing).

        Parameters
        ----------
        w : int
            A window of the reference store.
        rows : array of int, optional
            Target haplotypes to return (any order, repeats allowed); all by default.

        Returns
        -------
        alleles : uint8 [n_rows, n_sites_of_window]
            0 = reference REF, 1 = reference ALT (flipped sites recoded); 0 where missing.
        missing : bool [n_rows, n_sites_of_window]
            True where the target has no allele: whole columns at sites the target lacks,
            single entries at genotypes missing in the input.
        """
        rows = self._rows(rows)
        sites = self.reference.window_sites(w)
        j0, j1 = np.searchsorted(self._sites, [sites.start, sites.stop])
        cols = self._sites[j0:j1] - sites.start
        alleles = np.zeros((len(rows), len(sites)), dtype=np.uint8)
        missing = np.ones((len(rows), len(sites)), dtype=bool)
        if j1 > j0:
            alleles[:, cols], missing[:, cols] = self._aligned(int(j0), int(j1), rows)
        return alleles, missing

    def window_alleles(self, w: int, rows: np.ndarray | None = None) -> np.ndarray:
        """uint8 [n_rows, n_sites_of_window]: the target's alleles in reference coding (see :meth:`window`)."""
        return self.window(w, rows)[0]

    def window_missing(self, w: int, rows: np.ndarray | None = None) -> np.ndarray:
        """bool [n_rows, n_sites_of_window]: where the target has no allele (see :meth:`window`)."""
        return self.window(w, rows)[1]

    def _rows(self, rows: np.ndarray | None) -> np.ndarray:
        if rows is None:
            return np.arange(self.n_haplotypes)
        rows = np.asarray(rows)
        if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
            raise ArgumentError(f"rows must be a 1-D array of haplotype indices, got {rows.dtype} {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_haplotypes):
            raise ArgumentError(f"rows must lie in [0, {self.n_haplotypes}); got {rows.min()}..{rows.max()}")
        return rows

    def _aligned(self, j0: int, j1: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Alleles and missing flags [n_rows, j1 - j0] of aligned sites j0..j1 (in reference order)."""
        if self._store is not None:
            sites = self._sites[j0:j1]
            t = self.target_index[sites]
            lo = int(t.min())
            alleles = self._store.read_alleles(lo, int(t.max()) + 1, rows)[:, t - lo]
            return alleles ^ self.flipped[sites].astype(np.uint8), np.zeros(alleles.shape, dtype=bool)
        alleles = _unpack(self._packed, j0, j1, rows)
        if self._missing_packed is None:
            return alleles, np.zeros(alleles.shape, dtype=bool)
        return alleles, _unpack(self._missing_packed, j0, j1, rows).astype(bool)


def _unpack(packed: np.ndarray, start: int, stop: int, rows: np.ndarray) -> np.ndarray:
    """Columns [start, stop) of a bit-packed [n_rows, ceil(n / 8)] array, for ``rows``."""
    bits = np.unpackbits(packed[rows][:, start // 8 : (stop + 7) // 8], axis=1)
    return bits[:, start % 8 : start % 8 + (stop - start)]


def _open_target(
    target: PanelStore | SiteSource | str | os.PathLike[str], policy: InputPolicy | None, reference: PanelStore
) -> PanelStore | SiteSource:
    if isinstance(target, PanelStore) or hasattr(target, "blocks"):
        return target  # type: ignore[return-value]
    path = Path(target)
    if path.is_dir() and read_store_attrs(path) is not None:
        return PanelStore(path)
    if not path.exists():
        raise StoreError(f"{path}: no such target (a panel store, a VCF/BCF file or a VCF Zarr store)")
    if policy is None:
        policy = InputPolicy(**{**reference.meta["params"]["policy"], "missing": "mask"})
    return open_source(path, policy=policy)


class _ContigMap:
    """Target contig names -> reference contig indices (exact, then without ``chr``, then aliases first)."""

    def __init__(self, ref_contigs: list[str], aliases: Mapping[str, str]) -> None:
        self.names = ref_contigs
        self.exact = {c: i for i, c in enumerate(ref_contigs)}
        self.loose = {_loose(c): i for i, c in enumerate(ref_contigs)}
        for name, to in aliases.items():
            if to not in self.exact:
                raise ArgumentError(
                    f"contig alias {name} -> {to}: the reference has no contig {to} (it has {', '.join(ref_contigs)})"
                )
        self.aliases = dict(aliases)
        self.used: dict[str, str] = {}
        self.unknown: set[str] = set()

    def index(self, name: str) -> int:
        if name in self.aliases:
            i = self.exact[self.aliases[name]]
        else:
            i = self.exact.get(name, self.loose.get(_loose(name), -1))
        if i < 0:
            self.unknown.add(name)
        else:
            self.used[name] = self.names[i]
        return i


def _loose(name: str) -> str:
    """A contig name without a ``chr`` prefix or case; the mitochondrion as ``mt``."""
    n = name.lower()
    n = n[3:] if n.startswith("chr") else n
    return "mt" if n == "m" else n


class SiteMatcher:
    """Finds each of some sites' reference site by (contig, position, REF, ALT), REF/ALT swaps allowed.

    Parameters
    ----------
    reference_sites : dict of arrays
        The reference's ``contig``, ``position``, ``ref`` and ``alt`` columns, in store order
        (as :meth:`PanelStore.site_table` gives them).
    contig_runs : list of (name, first, stop)
        The reference's contigs in store order, positions sorted within each.
    aliases : mapping
        Other contig name -> reference contig name, used before the automatic matching.
    """

    def __init__(
        self,
        reference_sites: Mapping[str, np.ndarray],
        contig_runs: list[tuple[str, int, int]],
        aliases: Mapping[str, str],
    ) -> None:
        runs = contig_runs
        contig_idx = np.repeat(np.arange(len(runs), dtype=np.int64), [stop - first for _, first, stop in runs])
        # Contig runs are in store order and positions sorted within each, so the keys are sorted.
        self.keys = (contig_idx << _POS_BITS) | np.asarray(reference_sites["position"]).astype(np.int64)
        self.ref = np.char.upper(np.asarray(reference_sites["ref"], dtype=str))
        self.alt = np.char.upper(np.asarray(reference_sites["alt"], dtype=str))
        self.contigs = _ContigMap([name for name, _, _ in runs], aliases)
        self.taken = np.zeros(len(self.keys), dtype=bool)
        self.counts = {"dropped": 0, "allele_mismatch": 0, "duplicate": 0}

    def align(
        self, contigs: Any, positions: np.ndarray, refs: Any, alts: Any, offset: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(target site index, reference site index, flipped) of the sites of one target block that align.

        Target site indices count from ``offset``; the counts of the other cases accumulate.
        """
        names, inverse = np.unique(np.asarray(contigs, dtype=str), return_inverse=True)
        cidx = np.asarray([self.contigs.index(str(n)) for n in names], dtype=np.int64)[inverse.reshape(-1)]
        positions = np.asarray(positions, dtype=np.int64)
        keys = (np.maximum(cidx, 0) << _POS_BITS) | positions
        lo = np.searchsorted(self.keys, keys, side="left")
        n_cand = np.where(cidx >= 0, np.searchsorted(self.keys, keys, side="right") - lo, 0)
        t_ref = np.char.upper(np.asarray(refs, dtype=str))
        t_alt = np.char.upper(np.asarray(alts, dtype=str))
        ridx = np.full(len(keys), -1, dtype=np.int64)
        flip = np.zeros(len(keys), dtype=bool)
        for swap in (False, True):  # an exact match wins over a swapped one at the same position
            a, b = (t_alt, t_ref) if swap else (t_ref, t_alt)
            for k in range(int(n_cand.max(initial=0))):
                c = np.flatnonzero((n_cand > k) & (ridx < 0))
                j = lo[c] + k
                ok = (self.ref[j] == a[c]) & (self.alt[j] == b[c])
                ridx[c[ok]], flip[c[ok]] = j[ok], swap
        self.counts["dropped"] += int((n_cand == 0).sum())
        self.counts["allele_mismatch"] += int(((n_cand > 0) & (ridx < 0)).sum())
        hit = np.flatnonzero(ridx >= 0)
        _, first = np.unique(ridx[hit], return_index=True)
        fresh = np.zeros(len(hit), dtype=bool)
        fresh[first] = True
        fresh &= ~self.taken[ridx[hit]]
        self.counts["duplicate"] += int(len(hit) - fresh.sum())
        hit = hit[fresh]
        self.taken[ridx[hit]] = True
        return offset + hit, ridx[hit], flip[hit]
