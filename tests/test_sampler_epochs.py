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
