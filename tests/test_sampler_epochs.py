"""The data path under DDP and persistent workers: ranks agree, masks follow set_epoch everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import vcfstore as vs
from vcfstore.retrieval import WindowGroupedBatchSampler


@pytest.mark.parametrize("world_size", range(1, 17))
def test_every_rank_yields_len_batches_and_ranks_cover_the_epoch(world_size):
    for n_batches in range(21):
        lengths, seen = set(), []
        for rank in range(world_size):
            s = WindowGroupedBatchSampler(3, n_batches, 3, seed=1, rank=rank, world_size=world_size)
            batches = list(s)
            assert len(batches) == len(s), (world_size, n_batches, rank)
            lengths.add(len(s))
            seen += [tuple(b) for b in batches]
        assert len(lengths) == 1  # every rank runs the same number of steps
        assert len({tuple(b) for b in WindowGroupedBatchSampler(3, n_batches, 3, seed=1)} - set(seen)) == 0


def _epoch_order(n_samples, n_windows, b, seed, epoch, shuffle, drop_last):
    """The documented order, built eagerly: windows shuffled, then each window's samples shuffled and cut."""
    rng = np.random.default_rng([seed, epoch])
    windows = rng.permutation(n_windows) if shuffle else np.arange(n_windows)
    out = []
    for w in windows:
        samples = rng.permutation(n_samples) if shuffle else np.arange(n_samples)
        chunks = [samples[i : i + b] for i in range(0, n_samples, b)]
        out += [list(w * n_samples + c) for c in chunks if len(c) == b or not drop_last]
    return out


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_batches_follow_the_epoch_order_dealt_to_ranks(shuffle, drop_last):
    """Each rank takes every world_size-th batch of the epoch's order from where a resumed pass starts, cycling."""
    for n_samples, n_windows, b, world in ((7, 5, 3, 1), (24, 5, 8, 3), (7, 1, 8, 4), (10, 4, 3, 64)):
        order = _epoch_order(n_samples, n_windows, b, 9, 3, shuffle, drop_last)
        for rank in range(min(world, 3)):
            for resume in (0, 2):
                s = WindowGroupedBatchSampler(
                    n_samples, n_windows, b, seed=9, shuffle=shuffle, drop_last=drop_last, rank=rank, world_size=world
                )
                s.set_epoch(3)
                s._resume_at = resume
                left = order[resume:]
                want = [left[(rank + i * world) % len(left)] for i in range(-(-len(left) // world))] if left else []
                assert list(s) == want, (n_samples, n_windows, b, world, rank, resume)


def test_a_biobank_epoch_is_not_materialised():
    """100,000 samples x 331 windows (33 million items): the first batches come at once, in little memory."""
    import time
    import tracemalloc

    s = WindowGroupedBatchSampler(100_000, 331, 24, seed=0, rank=0, world_size=1)
    tracemalloc.start()
    t = time.perf_counter()
    it = iter(s)
    first = [next(it) for _ in range(10)]
    elapsed, (_, peak) = time.perf_counter() - t, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(s) == 331 * -(-100_000 // 24) and all(len(b) == 24 for b in first)
    assert peak < 10e6 and elapsed < 5, (peak, elapsed)  # eager lists of the epoch: about 3 GB


def test_rank_and_world_size_go_together():
    with pytest.raises(vs.ArgumentError, match="pass rank and world_size together"):
        WindowGroupedBatchSampler(4, 2, 2, rank=3)
    with pytest.raises(vs.ArgumentError, match="pass rank and world_size together"):
        WindowGroupedBatchSampler(4, 2, 2, world_size=2)
    with pytest.raises(vs.ArgumentError, match="outside world size"):
        WindowGroupedBatchSampler(4, 2, 2, rank=2, world_size=2)
    with pytest.raises(vs.ArgumentError, match="batch_size"):
        WindowGroupedBatchSampler(4, 2, 0)


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_follow_set_epoch(sim_store, context):
    ds = vs.TargetDataset(sim_store, vs.MaskSchedule(seed=3), epoch=0, rate=0.3)
    sampler = WindowGroupedBatchSampler.for_dataset(ds, batch_size=8, seed=2)
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        num_workers=2,
        persistent_workers=True,
        collate_fn=vs.collate,
        multiprocessing_context=context,
    )
    for epoch, rate in ((0, 0.3), (1, 0.6), (2, 0.45)):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch, rate=rate)
        for batch in loader:
            w = int(batch["window_idx"][0])
            want = vs.MaskSchedule(seed=3).window_mask(sim_store, w, epoch, rate)
            assert (batch["mask"] == torch.as_tensor(want)).all(), (epoch, rate, w)
            assert np.isclose(batch["mask"][0].sum().item(), want.sum())
