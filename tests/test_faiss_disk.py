"""Per-window FAISS indexes on disk: exactness, zero-copy mapping, bad files, rebuilds, budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import faiss
import numpy as np
import pytest
import torch

import vcfstore as vs
from vcfstore.index import IndexSet, IndexSetError, ReadOnlyIndexError, StaleIndexError, advise_mapping
from vcfstore.retrieval.layers import PositionwiseEmbedding
from vcfstore.testing import run_measured


def _layer(d: int = 4, seed: int = 0) -> PositionwiseEmbedding:
    torch.manual_seed(seed)
    return PositionwiseEmbedding(d_model=d)


def _encode(store, layer, w, mask, rows=None):
    rows = np.arange(store.n_haplotypes) if rows is None else rows
    layer.eval()
    with torch.no_grad():
        tok = torch.as_tensor(store.window_tokens(w, rows=rows, mask=mask))
        af = torch.as_tensor(store.window_af(w)).expand(len(rows), -1)
        return layer(tok, af=af).reshape(len(rows), -1).numpy()


@pytest.fixture(scope="module")
def built(sim_store, tmp_path_factory):
    layer = _layer()
    masks = vs.MaskSchedule(3).at(sim_store, epoch=0, rate=0.4)
    d = tmp_path_factory.mktemp("ix") / "flat"
    return IndexSet.build(sim_store, layer, d, masks, progress=False), layer, masks


def test_mapped_search_equals_in_ram_flat(built, sim_store):
    iset, layer, masks = built
    for w in (0, 5, sim_store.n_windows - 1):
        refs = _encode(sim_store, layer, w, masks[w])
        ram = faiss.IndexFlatL2(refs.shape[1])
        ram.add(refs)
        queries = refs[::17] + np.float32(0.01)
        d_map, i_map = iset.search(w, queries, 5)
        d_ram, i_ram = ram.search(queries, 5)
        np.testing.assert_array_equal(i_map, i_ram)
        np.testing.assert_array_equal(d_map, d_ram)
        assert iset.index(w).mapped
    np.testing.assert_array_equal(iset.mask(5), masks[5])


def test_read_only_and_query_checks(built):
    iset, _, _ = built
    with pytest.raises(ReadOnlyIndexError, match="read-only"):
        iset.index(0).add(np.zeros((1, iset.dim), np.float32))
    with pytest.raises(ReadOnlyIndexError):
        iset.index(0).reset()
    with pytest.raises(IndexSetError, match=r"query vectors have shape \(2, 7\)"):
        iset.search(0, np.zeros((2, 7), np.float32), 1)
    with pytest.raises(IndexSetError, match="k must be in"):
        iset.search(0, np.zeros((1, iset.dim), np.float32), 10_000)
    with pytest.raises(vs.StoreError, match="window 99 does not exist"):
        iset.search(99, np.zeros((1, iset.dim), np.float32), 1)


def test_kinds_and_recall(sim_store, tmp_path, built):
    flat, layer, masks = built
    refs = _encode(sim_store, layer, 2, masks[2])
    queries = refs[::9] + np.float32(0.05)
    _, exact = flat.search(2, queries, 8)
    for kind, floor in (("fp16", 0.99), ("SQ8", 0.9), ("IVF4,Flat", 0.5)):
        s = IndexSet.build(
            sim_store, layer, tmp_path / kind.replace(",", "_"), masks, kind=kind, windows=[2], progress=False
        )
        _, got = s.search(2, queries, 8)
        recall = np.mean([len(set(a) & set(b)) / 8 for a, b in zip(got, exact, strict=True)])
        assert recall >= floor, (kind, recall)
    assert os.path.getsize(tmp_path / "fp16" / "w00002.faiss") < 0.51 * os.path.getsize(flat.directory / "w00002.faiss")


def test_foreign_stale_and_bad_files(built, sim_store, tmp_path, sim_arrays):
    iset, layer, masks = built
    other = vs.build_from_arrays(*sim_arrays, tmp_path / "other", window_size=200)
    with pytest.raises(IndexSetError, match="built for another store"):
        IndexSet.open(iset.directory, other)
    with pytest.raises(IndexSetError, match="no index set here"):
        IndexSet.open(tmp_path, sim_store)
    with pytest.raises(StaleIndexError, match="masked differently"):
        iset.check_fresh(1, mask=masks[2])
    iset.check_fresh(1, mask=masks[1])
    assert iset.stale_windows(embedding=layer, masks=masks) == []
    assert iset.stale_windows(embedding=_layer(seed=1)) == list(range(sim_store.n_windows))

    copy = tmp_path / "copy"
    copy.mkdir()
    for f in iset.directory.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    s = IndexSet.open(copy, sim_store)
    with open(copy / "w00001.faiss", "r+b") as f:  # truncated
        f.truncate(1000)
    with pytest.raises(IndexSetError, match="truncated or replaced"):
        s.search(1, np.zeros((1, s.dim), np.float32), 1)
    raw = bytearray((copy / "w00002.faiss").read_bytes())  # a damaged header, same size
    raw[8:16] = b"\xff" * 8
    (copy / "w00002.faiss").write_bytes(bytes(raw))
    with pytest.raises(IndexSetError, match="corrupt"):
        s.search(2, np.zeros((1, s.dim), np.float32), 1)
    raw = bytearray((copy / "w00003.faiss").read_bytes())  # damaged codes: verify() finds it
    raw[-100] ^= 0xFF
    (copy / "w00003.faiss").write_bytes(bytes(raw))
    assert s.verify() == [1, 2, 3]
    (copy / "manifest.json").write_text("{broken")
    with pytest.raises(IndexSetError, match="cannot be read"):
        IndexSet.open(copy, sim_store)
    with pytest.raises(IndexSetError, match="holds 'flat' indexes, not 'fp16'"):
        IndexSet.build(sim_store, layer, iset.directory, masks, kind="fp16", progress=False)


def test_rebuild_touches_only_stale_windows(sim_store, tmp_path):
    layer = _layer()
    masks = list(vs.MaskSchedule(3).at(sim_store, epoch=0, rate=0.4))
    s = IndexSet.build(sim_store, layer, tmp_path / "ix", masks, progress=False)
    before = {p.name: p.stat().st_ino for p in (tmp_path / "ix").glob("*.faiss")}
    masks[4] = vs.MaskSchedule(3).window_mask(sim_store, 4, epoch=1, rate=0.4)
    assert s.rebuild(layer, masks, progress=False) == [4]
    after = {p.name: p.stat().st_ino for p in (tmp_path / "ix").glob("*.faiss")}
    assert [n for n in before if before[n] != after[n]] == ["w00004.faiss"]
    s.check_fresh(4, mask=masks[4])
    with torch.no_grad():
        layer.token.weight.add_(1.0)
    assert s.rebuild(layer, masks, progress=False) == list(range(sim_store.n_windows))
    assert s.stale_windows(embedding=layer, masks=masks) == []


READER = """
import sys, time, numpy as np, vcfstore as vs
from vcfstore.index import IndexSet
s = IndexSet.open(sys.argv[1], vs.open_store(sys.argv[2]))
q = np.zeros((4, s.dim), np.float32)
first = s.search(0, q, 3)[1]
print("ready", flush=True)
t = time.time()
n = 0
while time.time() - t < float(sys.argv[3]):
    assert (s.search(0, q, 3)[1] == first).all()
    n += 1
print("searches", n)
"""


def test_rebuild_while_another_process_searches(sim_store, tmp_path):
    layer = _layer()
    masks = list(vs.MaskSchedule(3).at(sim_store, epoch=0, rate=0.4))
    s = IndexSet.build(sim_store, layer, tmp_path / "ix", masks, progress=False)
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(tmp_path / "ix"), str(sim_store.path), "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().strip() == "ready"
    masks[0] = vs.MaskSchedule(3).window_mask(sim_store, 0, epoch=9, rate=0.6)
    for _ in range(3):
        with torch.no_grad():
            layer.token.weight.add_(0.5)
        assert 0 in s.rebuild(layer, masks, progress=False)
    out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0, err  # no SIGBUS: the reader kept its old file
    assert int(out.split()[-1]) > 0


BUILDER = """
import sys, time, torch, vcfstore as vs
from vcfstore.index import IndexSet
from vcfstore.retrieval.layers import PositionwiseEmbedding
torch.manual_seed(0)
layer = PositionwiseEmbedding(d_model=4)
class Slow(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
    def forward(self, tokens, af=None):
        time.sleep(0.05)
        return self.inner(tokens, af=af)
store = vs.open_store(sys.argv[2])
IndexSet.build(store, Slow(layer), sys.argv[1], vs.MaskSchedule(3).at(store, 0, 0.4), progress=False, batch_rows=64)
"""


def test_resume_after_kill(sim_store, tmp_path):
    out = tmp_path / "ix"
    proc = subprocess.Popen([sys.executable, "-c", BUILDER, str(out), str(sim_store.path)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(json.loads((out / "manifest.json").read_text())["windows"]) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads((out / "manifest.json").read_text())["windows"]
    assert 3 <= len(done) < sim_store.n_windows
    inodes = {w: (out / e["file"]).stat().st_ino for w, e in done.items()}

    class Slow(torch.nn.Module):  # the same weights as the killed build (state dict keys included)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, tokens, af=None):
            return self.inner(tokens, af=af)

    masks = vs.MaskSchedule(3).at(sim_store, 0, 0.4)
    resumed = IndexSet.build(sim_store, Slow(_layer()), out, masks, progress=False, batch_rows=64)
    assert all((out / done[w]["file"]).stat().st_ino == inodes[w] for w in done)  # kept, not rebuilt
    fresh = IndexSet.build(sim_store, Slow(_layer()), tmp_path / "fresh", masks, progress=False, batch_rows=64)
    for w in range(sim_store.n_windows):
        assert resumed.entry(w).sha256 == fresh.entry(w).sha256
    assert not list(out.glob(".*tmp"))


def test_budget_holds_two_of_five_indexes(sim_store, tmp_path):
    layer = _layer()
    masks = vs.MaskSchedule(3).at(sim_store, 0, 0.4)
    s = IndexSet.build(sim_store, layer, tmp_path / "ix", masks, windows=range(5), progress=False)
    size = s.entry(0).size
    budget = vs.MemoryBudget("11GB", mapped_limit=int(2.5 * size))
    s = IndexSet.open(tmp_path / "ix", sim_store, budget)
    q = np.zeros((2, s.dim), np.float32)
    for _ in range(2):
        for w in range(5):
            for _batch in range(3):  # window-grouped batches hit the cache
                s.search(w, q, 1)
    r = budget.report()
    assert r["peak_mapped"] <= 2.5 * size and r["evictions"]["faiss indexes"] == 8
    cache = s.cache_stats()
    assert cache["entries"] == 2 and cache["hits"] == 20 and cache["misses"] == 10


def test_mapping_is_readvised(built):
    iset, _, _ = built
    iset.search(0, np.zeros((1, iset.dim), np.float32), 1)
    assert advise_mapping(iset.directory / "w00000.faiss", "sequential") >= iset.entry(0).size - 4096


MAPPED = """
import sys, faiss, numpy as np, vcfstore as vs
from vcfstore.index import IndexSet
from vcfstore.memory import StatmMeter
s = IndexSet.open(sys.argv[1], vs.open_store(sys.argv[2]))
q = np.zeros((8, s.dim), np.float32)
base = StatmMeter().read().anon
if sys.argv[3] == "vcfstore":
    s.search(0, q, 4)
else:  # a plain read_index, as the first fix did: the whole file is copied into anonymous RAM
    faiss.read_index(str(s.directory / "w00000.faiss")).search(q, 4)
print(base)
"""


BIG_BUILD = """
import sys, torch, vcfstore as vs
from vcfstore.index import IndexSet
from vcfstore.memory import StatmMeter
from vcfstore.retrieval.layers import PositionwiseEmbedding
torch.manual_seed(0)
store = vs.open_store(sys.argv[2])
layer = PositionwiseEmbedding(d_model=26)
layer(torch.zeros((2, 1030), dtype=torch.long), af=torch.zeros((2, 1030)))  # warm torch's allocator
print(StatmMeter().read().anon, flush=True)
IndexSet.build(store, layer, sys.argv[1], vs.MaskSchedule(1).at(store, 0, 0.3), windows=[0], progress=False,
               batch_rows=32)
"""


def test_big_index_build_streams_and_opens_zero_copy(tmp_path):
    """A 214 MB flat index: built with bounded memory, then mapped without copying it."""
    from vcfstore.simulate import TreeSequenceSource, simulate_panel

    store = vs.build_store(TreeSequenceSource(simulate_panel(1000, 1.5e6, seed=2)), tmp_path / "s", progress=False)
    run = run_measured([sys.executable, "-c", BIG_BUILD, str(tmp_path / "ix"), str(store.path)], interval=0.002)
    assert run.returncode == 0, run.stderr
    size = IndexSet.open(tmp_path / "ix", store).entry(0).size
    assert size >= 200e6
    # Measured: about 12 batch-sized float buffers in flight (the layer's intermediates, the
    # flattened batch, its codes), whatever the index size; 16 leaves room for allocator noise.
    grew_build = run.peak_anon - int(run.stdout.split()[0])
    assert grew_build < 32 * 1030 * 26 * 4 * 16 and grew_build < 0.3 * size
    grew = {}
    for how in ("vcfstore", "plain"):
        run = run_measured([sys.executable, "-c", MAPPED, str(tmp_path / "ix"), str(store.path), how], interval=0.002)
        assert run.returncode == 0, run.stderr
        grew[how] = run.peak_anon - int(run.stdout.split()[-1])
    assert grew["vcfstore"] < 0.05 * size, grew
    assert grew["plain"] > 0.9 * size, grew  # the measurement can see a copy when there is one


class _SearchInWorkers(torch.utils.data.Dataset):
    """Each item searches window i's index from inside a DataLoader worker."""

    def __init__(self, iset, queries):
        self.iset, self.queries = iset, queries

    def __len__(self):
        return len(self.queries)

    def __getitem__(self, i):
        return self.iset.search(i, self.queries[i], 3)[1]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_index_set_in_dataloader_workers(built, sim_store, context):
    iset, layer, masks = built
    queries = [_encode(sim_store, layer, w, masks[w], rows=np.arange(4)) for w in range(4)]
    expect = [iset.search(w, q, 3)[1] for w, q in enumerate(queries)]  # the parent has indexes open
    loader = torch.utils.data.DataLoader(
        _SearchInWorkers(iset, queries), batch_size=None, num_workers=2, multiprocessing_context=context
    )
    got = [np.asarray(x) for x in loader]
    assert all((a == b).all() for a, b in zip(got, expect, strict=True))


def test_parallel_build_writes_the_same_files(sim_store, tmp_path):
    layer = _layer()
    layer.train()  # build must use eval mode (no dropout) in every thread, and restore the mode
    masks = vs.MaskSchedule(3).at(sim_store, 0, 0.4)
    one = IndexSet.build(sim_store, layer, tmp_path / "one", masks, progress=False, workers=1)
    two = IndexSet.build(sim_store, layer, tmp_path / "two", masks, progress=False, workers=3)
    assert [one.entry(w).sha256 for w in range(sim_store.n_windows)] == [
        two.entry(w).sha256 for w in range(sim_store.n_windows)
    ]
    assert layer.training


def test_gpu_path_accounts_gpu_memory(built, sim_store, monkeypatch):
    """The GPU path with a stand-in for faiss-gpu (no GPU here): copies are admitted as GPU bytes."""
    iset, layer, masks = built
    copies = []

    def to_gpu(res, device, index):
        copies.append(device)
        return faiss.clone_index(index)  # an in-memory copy stands in for the device copy

    monkeypatch.setattr(faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    size = iset.entry(0).size
    budget = vs.MemoryBudget("11GB", gpu_limit=int(2.5 * size))
    gpu = IndexSet.open(iset.directory, sim_store, budget, gpu=True)
    q = _encode(sim_store, layer, 0, masks[0], rows=np.arange(3))
    for w in range(5):
        assert (
            gpu.search(w, _encode(sim_store, layer, w, masks[w], rows=np.arange(3)), 2)[1]
            == iset.search(w, _encode(sim_store, layer, w, masks[w], rows=np.arange(3)), 2)[1]
        ).all()
    r = budget.report()
    assert copies == [0] * 5 and r["peak_gpu"] <= 2.5 * size and r["evictions"]["faiss indexes"] == 3
    assert r["consumers"]["faiss indexes"]["mapped"] == 0 and r["consumers"]["faiss indexes"]["gpu"] == 2 * size
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.warns(UserWarning, match="searching on the CPU"):
        IndexSet.open(iset.directory, sim_store, gpu=True).search(0, q, 1)
