"""The demo: the whole flow on an embedded default (a simulated panel), step by step."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore.testing import best_time


def run_demo(
    *,
    vcf_path: Path | None = None,
    out_dir: Path | None = None,
    n_samples: int = 1004,
    sequence_length: float = 10e6,
    seed: int = 42,
    train_steps: int = 60,
    echo: Callable[[str], None] = print,
) -> None:
    """Simulate (or read) a panel, build a store, read it, retrieve under a budget, train briefly."""
    from vcfstore.app.display import print_store_info
    from vcfstore.simulate import TreeSequenceSource, simulate_panel
    from vcfstore.sources import SiteSource, open_source
    from vcfstore.store.builder import build_store
    from vcfstore.store.masks import MaskSchedule

    with tempfile.TemporaryDirectory(prefix="vcfstore-demo-") as tmp:
        store_dir = out_dir or Path(tmp) / "panel.vcfstore"
        t0 = time.perf_counter()
        if vcf_path is None:
            echo(
                f"1. simulating {n_samples} diploid samples over {sequence_length / 1e6:.1f} Mb "
                f"with msprime (seed {seed})"
            )
            source: SiteSource = TreeSequenceSource(simulate_panel(n_samples, sequence_length, seed=seed))
        else:
            echo(f"1. reading {vcf_path}")
            source = open_source(vcf_path)
        echo(f"   {len(source.samples)} samples ready in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        echo(f"2. building the panel store in {store_dir}")
        store = build_store(source, store_dir, force=out_dir is not None)
        echo(f"   built in {time.perf_counter() - t0:.1f} s")
        print_store_info(store.info())

        echo("3. reading windows (what a training step does)")
        w = store.n_windows // 2
        rows16 = np.arange(0, store.n_haplotypes, max(1, store.n_haplotypes // 16))[:16]
        timings = {
            "whole window": best_time(lambda: store.window_alleles(w), 20) * 1e3,
            "16-row gather": best_time(lambda: store.window_alleles(w, rows=rows16), 20) * 1e3,
        }
        for what, ms in timings.items():
            echo(f"   {what:14s} of window {w}: {ms:.2f} ms")
        schedule = MaskSchedule(seed=seed)
        mask = schedule.window_mask(store, w, epoch=0, rate=0.3)
        tokens = store.window_tokens(w, rows=np.arange(2), mask=mask)
        sites = store.window_sites(w)
        echo(
            f"   window {w}: sites {sites.start}..{sites.stop - 1}, {int(mask.sum())} of {len(sites)} masked "
            f"(epoch 0, rate 0.3, {schedule.mask_version(0, 0.3)})"
        )
        echo(f"   tokens of haplotypes 0-1, first 16 positions:\n{tokens[:, :16]}")

        _retrieval(store, schedule, w, echo)
        if train_steps:
            from vcfstore.app.train_example import split_store, train

            ref, tgt = split_store(store, Path(tmp) / "train")
            panel = vcf_path.name if vcf_path is not None else "the simulated panel"
            echo(
                f"5. training a small VCF-Bert-like model with K=1 retrieval for {train_steps} steps on {panel}: "
                f"{ref.n_haplotypes // 2} reference and {tgt.n_haplotypes // 2} target samples, {ref.n_sites} sites "
                f"(positions {ref.positions[0]}..{ref.positions[-1]}) in {ref.n_windows} windows of up to 128 sites"
            )
            r = train(ref, tgt, steps=train_steps, log_every=max(1, train_steps // 6), echo=echo)
            echo(
                f"   loss {r.first_loss:.4f} -> {r.last_loss:.4f}, masked-site accuracy {r.first_accuracy:.3f} -> "
                f"{r.last_accuracy:.3f} in {r.seconds:.0f} s; peak anonymous memory {r.peak_anon / 2**20:.0f} MiB"
            )


def _retrieval(store: Any, schedule: Any, w: int, echo: Callable[[str], None]) -> None:
    """Step 4: K-nearest references of a batch of masked queries under a memory budget."""
    import torch

    from vcfstore.memory.budget import MemoryBudget
    from vcfstore.retrieval.layers import PositionwiseEmbedding
    from vcfstore.retrieval.retriever import Retriever

    echo("4. retrieval under a memory budget (exact token-space search, no index files)")
    budget = MemoryBudget("2GB")
    torch.manual_seed(0)
    layer = PositionwiseEmbedding(d_model=192, max_len=store.max_seq_len)
    k, n_samples = min(8, store.n_haplotypes), min(24, store.n_haplotypes // 2)
    retriever = Retriever(store, layer, k=k, backend="exact", budget=budget)
    mask = schedule.window_mask(store, w, epoch=0, rate=0.3)
    queries = store.window_tokens(w, rows=np.arange(2 * n_samples), mask=mask)
    retriever.search(w, queries)  # first call: verifies the layer is position-wise, caches the window
    ms = best_time(lambda: retriever.search(w, queries), repeat=5) * 1e3
    d, i = retriever.search(w, queries)
    echo(
        f"   {2 * n_samples} queries ({n_samples} samples x 2 haplotypes), K={k}, against {store.n_haplotypes} "
        f"references: {ms:.1f} ms"
    )
    echo(f"   query 0 -> references {i[0].tolist()} (distances {np.round(d[0], 1).tolist()})")
    batch = {
        "hap_1": torch.as_tensor(queries[0::2]),
        "hap_2": torch.as_tensor(queries[1::2]),
        "af": torch.as_tensor(np.tile(store.window_af(w), (n_samples, 1))),
        "window_idx": torch.full((n_samples,), w),
    }
    out = retriever.augment(batch)
    echo(
        f"   augment: rag_emb_h1 {tuple(out['rag_emb_h1'].shape)} encoded now, with gradients "
        f"(requires_grad={out['rag_emb_h1'].requires_grad})"
    )
    echo(budget.report_table().rstrip())
