"""Realistic simulated panels (msprime) for the demo, tests and benchmarks.

A coalescent simulation with human-like parameters gives haplotypes whose linkage and
frequency spectrum resemble a real panel's, which matters for compression and retrieval figures
(uniform random alleles would compress and search nothing like real data).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vcfstore.sources.tskit import TreeSequenceSource


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

    from vcfstore.store.builder import build_store

    ts = simulate_panel(n_reference + n_target, sequence_length, seed=seed)
    nodes = np.arange(ts.num_samples)
    ref_ts = ts.simplify(samples=nodes[: 2 * n_reference], filter_sites=False)
    tgt_ts = ts.simplify(samples=nodes[2 * n_reference :], filter_sites=False)
    out = Path(out)
    ref, tgt = (
        build_store(
            TreeSequenceSource(part, name=name),
            out / f"{name}.vcfstore",
            window_size=window_size,
            max_seq_len=max_seq_len,
            progress=False,
            force=True,
        )
        for part, name in ((ref_ts, "reference"), (tgt_ts, "targets"))
    )
    return ref, tgt
