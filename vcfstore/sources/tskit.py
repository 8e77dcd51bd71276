"""Phased biallelic sites of a tskit tree sequence (msprime simulations), decoded in bulk.

Sites are decoded by tskit (``ts.variants(copy=False)``: C code, one pass over the trees)
straight into a uint8 block. Every record still goes through the source's
:class:`RecordFilter` for its bookkeeping (counts, order, duplicates), but a site with two
alleles and no missing data, which the filter would keep as it is, passes with its metadata
only: its genotypes never take the filter's int16 per-sample path, which costs ten times the
decoding at 200,000 haplotypes. Other sites (more alleles, missing data) take that path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from vcfstore.errors import InputError
from vcfstore.sources.base import SiteBlock
from vcfstore.sources.policy import InputPolicy, RecordFilter


class TreeSequenceSource:
    """Sites of a tskit tree sequence (phased; haplotype ``h`` belongs to sample ``h // 2``).

    Parameters
    ----------
    ts : tskit.TreeSequence
    contig : str
        The contig name of every site.
    name : str
        The input's name, recorded in the store.
    nodes : array of int, optional
        The sample nodes to keep, in haplotype order (an even number: consecutive pairs are one
        diploid sample); default every sample node. The rest of the panel (held-out targets,
        say) stays in the tree sequence untouched.
    """

    def __init__(self, ts: Any, *, contig: str = "1", name: str = "msprime", nodes: np.ndarray | None = None) -> None:
        self.ts, self.contig, self.name = ts, contig, name
        self.nodes = None if nodes is None else np.asarray(nodes, dtype=np.int32)
        n_hap = ts.num_samples if self.nodes is None else len(self.nodes)
        if n_hap == 0 or n_hap % 2:
            raise InputError(f"the tree sequence gives {n_hap} haplotypes; need an even, non-zero number")
        self.samples = [f"tsk_{i}" for i in range(n_hap // 2)]
        self.policy = InputPolicy(non_snv="keep")
        self.filter = RecordFilter(self.policy)

    def describe(self) -> dict[str, object]:
        digest = hashlib.sha256(self.ts.tables.sites.position.tobytes() + self.ts.tables.mutations.site.tobytes())
        if self.nodes is not None:
            digest.update(self.nodes.tobytes())
        return {"kind": "tree-sequence", "name": self.name, "size": int(self.ts.nbytes), "sha256": digest.hexdigest()}

    def expected_records(self) -> int:
        return int(self.ts.num_sites)

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        n_hap = self.ts.num_samples if self.nodes is None else len(self.nodes)
        positions = self.ts.sites_position.astype(np.int64) + 1  # msprime positions are 0-based
        # A fresh buffer per block: the one yielded is the consumer's, and only one is ever filled.
        buf = np.empty((block_sites, n_hap), dtype=np.uint8)
        n = start = 0
        for var in self.ts.variants(samples=self.nodes, copy=False):
            if var.num_alleles != 2 or var.has_missing_data:
                yield from self._simple(buf[:n], positions[start : start + n])
                yield self._filtered(var, positions[start + n : start + n + 1])
                buf, start, n = np.empty_like(buf), start + n + 1, 0
                continue
            buf[n] = var.genotypes  # 0/1 as uint8
            n += 1
            if n == block_sites:
                yield from self._simple(buf, positions[start : start + n])
                buf, start, n = np.empty_like(buf), start + n, 0
        yield from self._simple(buf[:n], positions[start : start + n])

    def _simple(self, alleles: np.ndarray, pos: np.ndarray) -> Iterator[SiteBlock]:
        """Sites with two alleles and no missing data: their metadata through the filter, their alleles as decoded."""
        n = len(pos)
        if not n:
            return
        # The filter sees the records with no samples: it counts, checks order and duplicates,
        # and keeps each such record as one site.
        empty = np.zeros((n, 0, 2), dtype=np.int16)
        kept = self.filter(
            [self.contig] * n, pos.tolist(), self._names(pos), ["A"] * n, [["G"]] * n, empty, empty[..., 0] == 0, None
        )
        if len(kept) != n:
            raise InputError(f"internal error: the input policy dropped {n - len(kept)} biallelic tree-sequence sites")
        kept.alleles = alleles
        yield kept

    def _filtered(self, var: Any, pos: np.ndarray) -> SiteBlock:
        """One site with more than two alleles or missing data, through the filter's full path.

        REF is labelled A and the ALT alleles G, C, T, then ``<ALT4>`` and on (tskit's own allele
        strings may be anything, or repeat).
        """
        n_alt = max(1, var.num_alleles - 1)
        alts = [*"GCT", *(f"<ALT{i}>" for i in range(4, n_alt + 1))][:n_alt]
        gt = var.genotypes.astype(np.int16).reshape(1, -1, 2)  # -1 stays missing
        return self.filter(
            [self.contig], pos.tolist(), self._names(pos), ["A"], [alts], gt, np.ones(gt.shape[:2], bool), None
        )

    @staticmethod
    def _names(pos: np.ndarray) -> list[str]:
        return [f"sim{p}" for p in pos.tolist()]
