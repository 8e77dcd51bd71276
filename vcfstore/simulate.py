"""Realistic simulated panels (msprime) for the demo, tests and benchmarks.

A coalescent simulation with human-like parameters gives haplotypes whose linkage and
frequency spectrum resemble a real panel's, which matters for compression and retrieval figures
(uniform random alleles would compress and search nothing like real data).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .sources import InputPolicy, RecordFilter, SiteBlock, haplotype_block


def simulate_panel(
    n_samples: int = 1004,
    sequence_length: float = 10_000_000,
    *,
    seed: int = 42,
    population_size: float = 10_000,
    recombination_rate: float = 1e-8,
    mutation_rate: float = 1.25e-8,
) -> Any:
    """Simulate diploid samples with msprime; returns a ``tskit.TreeSequence``.

    The defaults (1004 diploid samples = 2008 haplotypes over 10 Mb) give about 41,000
    biallelic sites, 40 windows of 1028 sites, in about a second.
    """
    import msprime

    ts = msprime.sim_ancestry(
        samples=n_samples,
        ploidy=2,
        population_size=population_size,
        sequence_length=sequence_length,
        recombination_rate=recombination_rate,
        random_seed=seed,
    )
    return msprime.sim_mutations(ts, rate=mutation_rate, random_seed=seed + 1, model=msprime.BinaryMutationModel())


class TreeSequenceSource:
    """Sites of a tskit tree sequence, streamed variant by variant (biallelic, phased)."""

    def __init__(self, ts: Any, *, contig: str = "1", name: str = "msprime") -> None:
        self.ts, self.contig, self.name = ts, contig, name
        self.samples = [f"tsk_{i}" for i in range(ts.num_samples // 2)]
        self.policy = InputPolicy(non_snv="keep")
        self.filter = RecordFilter(self.policy)

    def describe(self) -> dict[str, object]:
        import hashlib

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


def simulate_reference_and_targets(
    out: Any,
    *,
    n_reference: int,
    n_target: int,
    sequence_length: float,
    seed: int = 11,
    window_size: int = 1028,
    max_seq_len: int = 1030,
) -> tuple[Any, Any]:
    """Simulate one population and store it as a reference panel and a target panel.

    Both stores hold the same sites (monomorphic ones included) and the same windows, as a
    training cohort and its reference panel must. Returns (reference, targets) stores, built in
    ``out/reference.vcfstore`` and ``out/targets.vcfstore``.
    """
    from pathlib import Path

    from .build import build_store

    ts = simulate_panel(n_reference + n_target, sequence_length, seed=seed)
    nodes = np.arange(ts.num_samples)
    ref_ts = ts.simplify(samples=nodes[: 2 * n_reference], filter_sites=False)
    tgt_ts = ts.simplify(samples=nodes[2 * n_reference :], filter_sites=False)
    kwargs = {"window_size": window_size, "max_seq_len": max_seq_len, "progress": False, "force": True}
    out = Path(out)
    ref = build_store(TreeSequenceSource(ref_ts, name="reference"), out / "reference.vcfstore", **kwargs)
    tgt = build_store(TreeSequenceSource(tgt_ts, name="targets"), out / "targets.vcfstore", **kwargs)
    return ref, tgt
