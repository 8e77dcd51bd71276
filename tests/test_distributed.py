"""torch.distributed: ranks with the gloo backend on the CPU, and mid-epoch resume on any world size.

The multi-rank tests start real processes that join one gloo process group (a file rendezvous
under the test's temporary directory); every rank writes what it saw and the test compares it
with a single-process run of the same epoch.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import pickle
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp

import vcfstore as vs
from vcfstore.index import IndexSet
from vcfstore.retrieval import WindowGroupedBatchSampler
from vcfstore.retrieval.layers import PositionwiseEmbedding

SEED, BATCH, K = 5, 8, 3
WORLD_SIZES = (3, 2)


def _layer() -> PositionwiseEmbedding:
    torch.manual_seed(0)
    return PositionwiseEmbedding(d_model=4).eval()


def _key(batch: dict) -> tuple:
    return tuple(zip(batch["window_idx"].tolist(), batch["sample_idx"].tolist(), strict=True))


def _epoch(store: vs.PanelStore, budget: vs.MemoryBudget | None, **sampler_kwargs) -> tuple[list, dict, object]:
    """Run one epoch: (batch keys in order, {key: neighbours}, the retriever)."""
    ds = vs.TargetDataset(store, vs.MaskSchedule(seed=3), epoch=1, rate=0.4, budget=budget)
    sampler = WindowGroupedBatchSampler.for_dataset(ds, batch_size=BATCH, seed=SEED, **sampler_kwargs)
    sampler.set_epoch(1)
    retriever = vs.Retriever(store, _layer(), k=K, backend="exact", budget=budget)
    keys, neighbours = [], {}
    for batch in torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=vs.collate):
        out = retriever.augment(batch)
        keys.append(_key(batch))
        neighbours[keys[-1]] = (out["rag_idx_h1"].numpy(), out["rag_idx_h2"].numpy())
    return keys, neighbours, retriever


def _ranks(rank: int, store: vs.PanelStore, work: Path) -> None:
    """One spawned process: a rank of a 3-rank job, then (ranks 0 and 1) of a 2-rank job."""
    for world_size in WORLD_SIZES:
        if rank < world_size:
            phase = work / f"world{world_size}"
            phase.mkdir(exist_ok=True)
            _rank(rank, world_size, store, phase)


def _rank(rank: int, world_size: int, store: vs.PanelStore, work: Path) -> None:
    rendezvous = f"file://{work / 'rendezvous'}"
    timeout = timedelta(seconds=60)  # a rank that falls out of step fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size, timeout=timeout)
    try:
        budget = vs.MemoryBudget("4GB")
        keys, neighbours, retriever = _epoch(store, budget)  # rank and world size from torch.distributed
        cached = sorted(int(w) for w in retriever.window_cache.cache.keys())
        # This rank's share of the index set, into the one directory every rank writes.
        masks = vs.MaskSchedule(seed=3).at(store, 1, 0.4)
        mine = list(range(store.n_windows))[rank::world_size]
        IndexSet.build(store, _layer(), work / "index", masks, windows=mine, progress=False)
        steps: list[int | None] = [None] * world_size
        dist.all_gather_object(steps, len(keys))  # DDP's ranks must agree on the number of steps
        report = {
            "steps": steps,
            "keys": keys,
            "neighbours": neighbours,
            "budget_uid": budget.uid,
            "budget_limit": budget.limit,
            "budget_anon": budget.held("anon"),
            "cached_windows": cached,
            "cached_bytes": sum(store.n_haplotypes * -(-len(store.window_sites(w)) // 8) for w in cached),  # packed
            "built": mine,
        }
        (work / f"rank{rank}.pkl").write_bytes(pickle.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def small(sim_arrays, tmp_path_factory) -> vs.PanelStore:
    """40 samples, 4 windows of 150 sites: a whole epoch with retrieval takes a fraction of a second."""
    alleles, positions = sim_arrays
    out = tmp_path_factory.mktemp("dist") / "small"
    return vs.build_from_arrays(alleles[:80, :600], positions[:600], out, window_size=150, max_seq_len=152)


@pytest.fixture(scope="module")
def single(small):
    """The single-process epoch: the oracle of every multi-rank run."""
    keys, neighbours, _ = _epoch(small, None, rank=0, world_size=1)
    return keys, neighbours


@pytest.fixture(scope="module")
def jobs(small, tmp_path_factory) -> Path:
    """Three fresh processes: a 3-rank gloo job, then a 2-rank one (one start-up for both).

    Started by a fork server that imported torch, FAISS and vcfstore once (unless an earlier test
    started it without them): each rank starts in a fraction of the seconds a spawned one takes.
    """
    work = tmp_path_factory.mktemp("ranks")
    mp.set_forkserver_preload(["torch", "faiss", "vcfstore.index", "vcfstore.retrieval", __name__])
    torch_mp.start_processes(_ranks, args=(small, work), nprocs=max(WORLD_SIZES), start_method="forkserver")
    return work


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_ranks_split_the_epoch_and_agree_with_one_process(small, single, jobs, world_size, tmp_path):
    sim_store, work = small, jobs / f"world{world_size}"
    reports = [pickle.loads((work / f"rank{r}.pkl").read_bytes()) for r in range(world_size)]
    keys, neighbours = single
    steps = math.ceil(len(keys) / world_size)
    assert all(r["steps"] == [steps] * world_size for r in reports)  # every rank runs the same number of steps
    # Together the ranks cover the epoch; batches repeat only to pad the last step.
    seen = Counter(k for r in reports for k in r["keys"])
    assert set(seen) == set(keys) and sum(seen.values()) - len(keys) == steps * world_size - len(keys)
    # Before the padding, the ranks' batches are disjoint: rank r's step i is batch i * world_size + r.
    unpadded = [
        {k for i, k in enumerate(r["keys"]) if i * world_size + rank < len(keys)} for rank, r in enumerate(reports)
    ]
    assert sum(len(u) for u in unpadded) == len(keys) == len(set().union(*unpadded))
    for r in reports:
        for key in r["keys"]:
            assert all(np.array_equal(a, b) for a, b in zip(r["neighbours"][key], neighbours[key], strict=True))
    # Each rank holds its own budget, with the whole limit, counting only its own cached windows.
    assert len({r["budget_uid"] for r in reports}) == world_size
    assert len({r["budget_limit"] for r in reports}) == 1
    for r in reports:
        assert set(r["cached_windows"]) <= {k[0][0] for k in r["keys"]}
        assert r["budget_anon"] == r["cached_bytes"] > 0
    # The index sets written by the ranks (each its share of windows) merged into one.
    assert sorted(w for r in reports for w in r["built"]) == list(range(sim_store.n_windows))
    iset = IndexSet.open(work / "index", sim_store)
    assert iset.verify() == []
    one = IndexSet.build(
        sim_store, _layer(), tmp_path / "one", vs.MaskSchedule(seed=3).at(sim_store, 1, 0.4), progress=False
    )
    q = sim_store.window_tokens(2, rows=np.arange(6), mask=iset.mask(2))
    x = _layer()(torch.as_tensor(q), af=torch.as_tensor(np.tile(sim_store.window_af(2), (6, 1))))
    x = x.reshape(6, -1).detach().numpy()
    for a, b in zip(iset.search(2, x, 5), one.search(2, x, 5), strict=True):
        assert np.array_equal(a, b)


def test_index_builds_take_turns_on_the_manifest(small, tmp_path):
    """A build that finds the manifest being updated waits for it, then merges (no error, no lost window)."""
    from vcfstore._lock import WriterLock

    masks = vs.MaskSchedule(seed=3).at(small, 1, 0.4)
    IndexSet.build(small, _layer(), tmp_path, masks, windows=[0], progress=False)
    held = WriterLock(tmp_path / ".manifest.json.lock", "another rank's update", vs.IndexSetError)
    held.acquire()
    threading.Timer(0.5, held.release).start()
    t = time.monotonic()
    iset = IndexSet.build(small, _layer(), tmp_path, masks, windows=[1], progress=False)
    assert time.monotonic() - t >= 0.5 and not (tmp_path / ".manifest.json.lock").exists()
    assert sorted(iset.manifest.windows) == [0, 1] and iset.verify() == []


# --- mid-epoch resume ----------------------------------------------------------------------


def _deal(n_samples, n_windows, world_size, steps=None, state=None, **kw):
    """Batches of each rank (``steps`` of them, or all) and rank 0's state afterwards."""
    samplers = [
        WindowGroupedBatchSampler(n_samples, n_windows, 3, seed=9, rank=r, world_size=world_size, **kw)
        for r in range(world_size)
    ]
    out = []
    for s in samplers:
        s.set_epoch(4)
        if state is not None:
            s.load_state_dict(state)
        it = iter(s)
        out.append([tuple(b) for _, b in zip(range(steps if steps is not None else len(s)), it, strict=False)])
    states = [s.state_dict() for s in samplers]
    assert all(st == states[0] for st in states)  # every rank in step reports the same state
    return out, states[0]


@pytest.mark.parametrize("before", [1, 2, 3])
@pytest.mark.parametrize("after", [1, 2, 3, 4])
def test_resume_mid_epoch_on_another_world_size(before, after):
    n_samples, n_windows = 7, 5  # 3 batches a window (the last one short): 15 batches an epoch
    whole = [tuple(b) for b in _sampler_epoch(n_samples, n_windows)]
    for steps in (0, 1, 2, 4):
        first, state = _deal(n_samples, n_windows, before, steps)
        taken = min(steps * before, len(whole))
        assert state["taken"] == taken and state["epoch"] == 4
        rest, end = _deal(n_samples, n_windows, after, state=state)
        # Before the checkpoint: the first `taken` batches of the epoch's order; after: the others.
        assert sorted(b for r in first for b in r) == sorted(whole[:taken])
        dealt = Counter(b for r in rest for b in r)
        remaining = len(whole) - taken
        assert set(dealt) == set(whole[taken:])
        assert sum(dealt.values()) == after * math.ceil(remaining / after)  # repeats only as padding
        assert end["taken"] == len(whole)
        # Items: each one of the epoch is taken before the restart or after it, never both.
        before_items = [i for r in first for b in r for i in b]
        after_items = {i for b in dealt for i in b}
        assert not set(before_items) & after_items
        assert sorted(before_items + sorted(after_items)) == sorted(i for b in whole for i in b)


def _sampler_epoch(n_samples, n_windows):
    s = WindowGroupedBatchSampler(n_samples, n_windows, 3, seed=9, rank=0, world_size=1)
    s.set_epoch(4)
    return list(s)


def test_a_state_of_other_batches_is_refused_and_a_new_epoch_starts_afresh():
    s = WindowGroupedBatchSampler(7, 5, 3, seed=9, rank=0, world_size=1)
    with pytest.raises(vs.ArgumentError, match="other batches"):
        s.load_state_dict(WindowGroupedBatchSampler(7, 5, 4, rank=0, world_size=1).state_dict())
    s.load_state_dict({**s.state_dict(), "taken": 6})
    assert len(s) == 9 and len(list(s)) == 9
    assert len(list(s)) == 15  # the resume applies to one pass
    s.load_state_dict({**s.state_dict(), "taken": 6})
    s.set_epoch(1)  # another epoch: from its start
    assert len(list(s)) == 15


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")
@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_the_epoch_and_the_masks(small, workers):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader():
        ds = vs.TargetDataset(small, vs.MaskSchedule(seed=3))
        sampler = WindowGroupedBatchSampler.for_dataset(ds, batch_size=BATCH, seed=SEED, rank=0, world_size=1)
        dl = StatefulDataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=vs.collate)
        return ds, sampler, dl

    ds, sampler, dl = loader()
    ds.set_epoch(2, rate=0.45)
    sampler.set_epoch(2)
    whole = [(_key(b), b["mask"]) for b in dl]
    it = iter(dl)
    head = [(_key(next(it)), None) for _ in range(5)]
    checkpoint = pickle.loads(pickle.dumps(dl.state_dict()))
    del it
    ds2, sampler2, dl2 = loader()  # a new job: epoch 0 and rate 0.3 until the checkpoint is loaded
    dl2.load_state_dict(checkpoint)
    tail = [(_key(b), b["mask"]) for b in dl2]
    assert [k for k, _ in head + tail] == [k for k, _ in whole]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tail, whole[5:], strict=True))  # epoch 2's masks
    assert (ds2.epoch, ds2.rate, sampler2.epoch) == (2, 0.45, 2)


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")
def test_stateful_dataloader_checkpoint_of_two_ranks_resumes_on_three(small):
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loaders(world_size):
        out = []
        for rank in range(world_size):
            ds = vs.TargetDataset(small, vs.MaskSchedule(seed=3))
            sampler = WindowGroupedBatchSampler.for_dataset(ds, BATCH, seed=SEED, rank=rank, world_size=world_size)
            out.append(StatefulDataLoader(ds, batch_sampler=sampler, collate_fn=vs.collate))
        return out

    whole = [_key(b) for b in loaders(1)[0]]
    two = loaders(2)
    iters = [iter(dl) for dl in two]
    before = [_key(next(it)) for _ in range(4) for it in iters]  # 4 steps of each rank
    checkpoint = pickle.loads(pickle.dumps(two[0].state_dict()))  # rank 0's, as a job saves it
    after = []
    for dl in loaders(3):
        dl.load_state_dict(checkpoint)
        after += [_key(b) for b in dl]
    assert not set(before) & set(after)
    assert set(before) | set(after) == set(whole) and len(before) == 8
    assert len(after) == 3 * math.ceil((len(whole) - 8) / 3)  # the rest, padded to equal steps
