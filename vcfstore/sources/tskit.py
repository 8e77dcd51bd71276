"""Phased biallelic sites of a tskit tree sequence (msprime simulations), streamed variant by variant."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from vcfstore.sources.arrays import haplotype_block
from vcfstore.sources.base import SiteBlock
from vcfstore.sources.policy import InputPolicy, RecordFilter


class TreeSequenceSource:
    """Sites of a tskit tree sequence, streamed variant by variant (biallelic, phased)."""

    def __init__(self, ts: Any, *, contig: str = "1", name: str = "msprime") -> None:
        self.ts, self.contig, self.name = ts, contig, name
        self.samples = [f"tsk_{i}" for i in range(ts.num_samples // 2)]
        self.policy = InputPolicy(non_snv="keep")
        self.filter = RecordFilter(self.policy)

    def describe(self) -> dict[str, object]:
        digest = hashlib.sha256(self.ts.tables.sites.position.tobytes() + self.ts.tables.mutations.site.tobytes())
        return {"kind": "tree-sequence", "name": self.name, "size": int(self.ts.nbytes), "sha256": digest.hexdigest()}

    def expected_records(self) -> int:
        return int(self.ts.num_sites)

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        n_hap = self.ts.num_samples
        buf = np.empty((block_sites, n_hap), dtype=np.uint8)
        pos: list[int] = []
        for var in self.ts.variants():
            buf[len(pos)] = var.genotypes
            pos.append(int(var.site.position) + 1)  # msprime positions are 0-based
            if len(pos) == block_sites:
                yield self._block(buf, pos)
                pos = []
        if pos:
            yield self._block(buf[: len(pos)], pos)

    def _block(self, alleles: np.ndarray, pos: list[int]) -> SiteBlock:
        n = len(pos)
        return haplotype_block(
            self.filter, [self.contig] * n, np.asarray(pos), [f"sim{p}" for p in pos], ["A"] * n, ["G"] * n, alleles
        )
