"""The demo: the whole flow on an embedded default (a simulated panel), step by step."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def run_demo(
    *,
    vcf_path: Path | None = None,
    out_dir: Path | None = None,
    n_samples: int = 1004,
    sequence_length: float = 10e6,
    seed: int = 42,
    echo: Callable[[str], None] = print,
) -> None:
    """Simulate (or read) a panel, build a store, and read windows, tokens and masks from it."""
    from .build import build_store
    from .display import print_store_info
    from .masks import MaskSchedule
    from .simulate import TreeSequenceSource, simulate_panel
    from .sources import open_source

    with tempfile.TemporaryDirectory(prefix="vcfstore-demo-") as tmp:
        store_dir = out_dir or Path(tmp) / "panel.vcfstore"
        t0 = time.perf_counter()
        if vcf_path is None:
            echo(
                f"1. simulating {n_samples} diploid samples over {sequence_length / 1e6:.1f} Mb "
                f"with msprime (seed {seed})"
            )
            source = TreeSequenceSource(simulate_panel(n_samples, sequence_length, seed=seed))
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
        timings = {
            "whole window": _best_ms(lambda: store.window_alleles(w)),
            "16-row gather": _best_ms(
                lambda: store.window_alleles(w, rows=np.arange(0, store.n_haplotypes, store.n_haplotypes // 16)[:16])
            ),
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


def _best_ms(fn: Callable[[], object], repeat: int = 20) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3
