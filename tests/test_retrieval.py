"""Retrieval: exact token-space search against brute force, FAISS agreement, augment, data path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import vcfstore as vs
from vcfstore.errors import NotPositionwiseError
from vcfstore.index import IndexSet
from vcfstore.retrieval import ExactSearcher
from vcfstore.retrieval.layers import ConvEmbedding, PositionwiseEmbedding


def _layer(d=8, seed=0):
    torch.manual_seed(seed)
    return PositionwiseEmbedding(d_model=d)


def _flat(layer, tokens, af):
    if isinstance(layer, torch.nn.Module):
        layer.eval()
    with torch.no_grad():
        a = torch.as_tensor(np.broadcast_to(af, tokens.shape).copy())
        return layer(torch.as_tensor(tokens), af=a).reshape(len(tokens), -1).numpy()


def _brute_force(store, layer, w, queries, k, query_af=None):
    """float64 squared L2 over every masked reference's flattened embedding; equal distances by lowest index.

    Distances within 1e-12 relative (float64 rounding of sums in different orders) are equal.
    """
    out_d, out_i = [], []
    for q in queries:
        refs = store.window_tokens(w, rows=np.arange(store.n_haplotypes), mask=q == 4)
        r = _flat(layer, refs, store.window_af(w)).astype(np.float64)
        x = _flat(layer, q[None], store.window_af(w) if query_af is None else query_af)[0].astype(np.float64)
        d = ((r - x) ** 2).sum(1)
        order = np.argsort(d, kind="stable")
        group = np.concatenate([[0], np.cumsum(np.diff(d[order]) > 1e-12 * d[order][1:])])
        i = order[np.lexsort((order, group))][:k]
        out_d.append(d[i])
        out_i.append(i)
    return np.array(out_d), np.array(out_i)


@pytest.fixture(scope="module")
def real_pair(real_data, tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    ref = vs.build_store(
        vs.VcfSource(real_data / "reference.vcf.gz"), d / "ref", progress=False, window_size=400, max_seq_len=402
    )
    policy = vs.InputPolicy(unphased="keep")
    tgt = vs.build_store(
        vs.VcfSource(real_data / "unphased.vcf.gz", policy=policy),
        d / "tgt",
        progress=False,
        window_size=400,
        max_seq_len=402,
    )
    return ref, tgt


@pytest.mark.parametrize("k", [1, 4, 16])
def test_exact_equals_brute_force_on_real_data(real_pair, k):
    ref, tgt = real_pair
    layer = _layer()
    retr = vs.Retriever(ref, layer, k=k, backend="exact")
    for epoch, rate, w in ((0, 0.3, 2), (1, 0.8, 40)):
        mask = vs.MaskSchedule(5).window_mask(ref, w, epoch, rate)
        queries = tgt.window_tokens(w, rows=np.arange(0, 40, 3), mask=mask)
        d, i = retr.search(w, queries)
        bd, bi = _brute_force(ref, layer, w, queries, k)
        np.testing.assert_array_equal(i, bi)
        np.testing.assert_allclose(d, bd, rtol=1e-3, atol=1e-2)
    assert retr.backend == "exact"


def test_exact_with_per_query_masks_and_other_af(sim_store, sim_arrays):
    layer = _layer(6)
    w = 3
    rng = np.random.default_rng(1)
    queries = sim_store.window_tokens(w, rows=np.arange(10))
    queries[:, 1:301][rng.random((10, 300)) < 0.5] = 4  # a different mask for every query
    qaf = sim_store.window_af(w) * 0.5
    d, i = vs.Retriever(sim_store, layer, k=5, backend="exact").search(w, queries, qaf)
    bd, bi = _brute_force(sim_store, layer, w, queries, 5, qaf)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-3)


def test_faiss_backend_returns_the_same_neighbours(real_pair, tmp_path):
    ref, tgt = real_pair
    layer = _layer()
    masks = vs.MaskSchedule(5).at(ref, 0, 0.3)
    windows = [2, 30]
    iset = IndexSet.build(ref, layer, tmp_path / "ix", masks, windows=windows, progress=False)
    for k in (1, 4, 16):
        exact = vs.Retriever(ref, layer, k=k, backend="exact")
        fa = vs.Retriever(ref, layer, k=k, backend="faiss", index_set=iset)
        for w in windows:
            q = tgt.window_tokens(w, rows=np.arange(30), mask=masks[w])
            de, ie = exact.search(w, q)
            df, i_f = fa.search(w, q)
            np.testing.assert_array_equal(ie, i_f)
            np.testing.assert_allclose(de, df, rtol=1e-3, atol=1e-2)
    other = vs.MaskSchedule(5).window_mask(ref, 2, 1, 0.3)
    with pytest.raises(vs.VcfstoreError, match="masked differently from the mask its index was built with"):
        fa.search(2, tgt.window_tokens(2, rows=np.arange(2), mask=other))


def test_non_positionwise_layer(sim_store, tmp_path):
    torch.manual_seed(0)
    conv = ConvEmbedding(4)
    q = sim_store.window_tokens(0, rows=np.arange(4), mask=vs.MaskSchedule(1).window_mask(sim_store, 0, 0, 0.3))
    with pytest.raises(NotPositionwiseError, match="not position-wise"):
        vs.Retriever(sim_store, conv, k=2, backend="exact").search(0, q)
    masks = vs.MaskSchedule(1).at(sim_store, 0, 0.3)
    iset = IndexSet.build(sim_store, conv, tmp_path / "ix", masks, windows=[0], progress=False)
    auto = vs.Retriever(sim_store, conv, k=2, backend="auto", index_set=iset)
    d, i = auto.search(0, q)
    assert auto.backend == "faiss" and i.shape == (4, 2)
    assert (i[:, 0] == np.arange(4)).all() or (d[:, 0] < 1e-3).all()  # each query finds its own row
    with pytest.raises(vs.VcfstoreError, match="needs an index_set"):
        vs.Retriever(sim_store, conv, backend="faiss")


def _batch(store, rows, w, mask):
    t = store.window_tokens(w, rows=rows, mask=mask)
    return {
        "hap_1": torch.as_tensor(t[0::2]),
        "hap_2": torch.as_tensor(t[1::2]),
        "af": torch.as_tensor(np.tile(store.window_af(w), (len(rows) // 2, 1))),
        "window_idx": torch.full((len(rows) // 2,), w),
    }


class _Counting(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.rows = inner, []

    def forward(self, tokens, af=None):
        self.rows.append(len(tokens))
        return self.inner(tokens, af=af)


def test_augment_shapes_gradients_and_lazy_encoding(sim_store):
    layer = _Counting(_layer(4))
    layer.train()
    # the direct path (composed rows: tests/test_compose.py)
    retr = vs.Retriever(sim_store, layer, k=3, backend="exact", compose="never")
    s = vs.MaskSchedule(2)
    b1 = _batch(sim_store, np.arange(12), 1, s.window_mask(sim_store, 1, 0, 0.4))
    b2 = _batch(sim_store, np.arange(40, 48), 4, s.window_mask(sim_store, 4, 0, 0.4))
    batch = {k: torch.cat([b1[k], b2[k]]) for k in b1}  # two windows in one batch
    retr.search(1, b1["hap_1"][:1].numpy())  # the one-off position-wise check embeds a few random rows
    layer.rows.clear()
    out = retr.augment(batch)
    assert out["rag_emb_h1"].shape == (10, 3, 1030, 4) and out["rag_emb_h1"].dtype == torch.float32
    assert out["rag_idx_h2"].shape == (10, 3)
    encoded = sum(r for r in layer.rows if r > 3)  # table rows are 3 a window; the rest are references
    unique = sum(
        len(np.unique(torch.cat([out["rag_idx_h1"][m], out["rag_idx_h2"][m]]).numpy()))
        for m in (slice(0, 6), slice(6, 10))
    )
    assert encoded == unique <= 2 * 10 * 3
    # the embeddings are those of the complete rows retrieved
    row = int(out["rag_idx_h1"][7, 1])
    complete = torch.as_tensor(sim_store.window_tokens(4, rows=np.array([row])))
    layer.eval()
    expect = layer.inner(complete, af=torch.as_tensor(sim_store.window_af(4))[None])
    layer.train()
    loss = out["rag_emb_h1"].pow(2).mean() + out["rag_emb_h2"].mean()
    loss.backward()
    grads = [p.grad for p in layer.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert expect.shape == (1, 1030, 4)


def test_augment_embeddings_equal_complete_rows_in_eval(sim_store):
    layer = _layer(4)
    layer.eval()
    retr = vs.Retriever(sim_store, layer, k=2, backend="exact")
    batch = _batch(sim_store, np.arange(6), 2, vs.MaskSchedule(2).window_mask(sim_store, 2, 0, 0.5))
    out = retr.augment(batch)
    rows = out["rag_idx_h2"].numpy()
    complete = sim_store.window_tokens(2, rows=rows.reshape(-1))
    expect = layer(torch.as_tensor(complete), af=torch.as_tensor(np.tile(sim_store.window_af(2), (len(complete), 1))))
    torch.testing.assert_close(out["rag_emb_h2"].reshape(-1, 1030, 4), expect)


def test_sampler_groups_windows_shuffles_and_shards():
    s = vs.WindowGroupedBatchSampler(10, 4, 3, seed=1, world_size=1, rank=0)
    batches = list(s)
    windows = [{i // 10 for i in b} for b in batches]
    assert all(len(w) == 1 for w in windows)
    order = [w.pop() for w in windows]
    assert all(order[i] == order[i + 1] or order[i + 1] not in order[: i + 1] for i in range(len(order) - 1))
    assert sorted(i for b in batches for i in b) == list(range(40)) and len(s) == len(batches) == 16
    assert list(s) == batches
    s.set_epoch(1)
    assert list(s) != batches
    shards = [list(vs.WindowGroupedBatchSampler(10, 4, 3, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert len({len(x) for x in shards}) == 1
    assert len(shards[0]) == len(vs.WindowGroupedBatchSampler(10, 4, 3, seed=1, rank=0, world_size=3))
    assert {i for x in shards for b in x for i in b} == set(range(40))


def _loader(ds, workers, context=None):
    sampler = vs.WindowGroupedBatchSampler.for_dataset(ds, 6, seed=3, world_size=1, rank=0)
    return DataLoader(
        ds, batch_sampler=sampler, num_workers=workers, collate_fn=vs.collate, multiprocessing_context=context
    )


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize(("workers", "context"), [(4, "fork"), (2, "spawn")])
def test_dataloader_workers_yield_the_same_batches(sim_store, workers, context):
    budget = vs.MemoryBudget("2GB")
    ds = vs.TargetDataset(sim_store, vs.MaskSchedule(9), epoch=2, rate=0.5, budget=budget)
    ds[0]  # the parent has used zarr before the workers start
    serial = list(_loader(ds, 0))
    parallel = list(_loader(ds, workers, context))
    assert len(serial) == len(parallel) == len(_loader(ds, 0)) > 10
    for a, b in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    b = serial[0]
    assert (b["window_idx"] == b["window_idx"][0]).all()
    m = b["mask"][0]
    assert (b["hap_1"][:, m] == 4).all() and (b["label_1"][:, ~m] == -100).all() and (b["label_1"][:, m] >= 5).all()


def test_dataset_checks_sites(sim_store, real_pair):
    ref, _ = real_pair
    with pytest.raises(vs.VcfstoreError, match="same sites"):
        vs.TargetDataset(sim_store, vs.MaskSchedule(1), reference=ref)


@pytest.mark.slow
def test_training_example_learns(tmp_path):
    from vcfstore.app.train_example import split_panel, train

    ref, tgt = split_panel(tmp_path, n_samples=120, length=1e6, target_samples=30)
    r = train(ref, tgt, steps=40, workers=0, log_every=10, echo=lambda s: None)
    assert r.steps == 40 and r.last_loss < 0.5 * r.first_loss and r.last_accuracy > r.first_accuracy
    assert r.budget_report["refused"] == 0


def test_table_path_equals_popcount_path(sim_store):
    """The matrix-product path (used on a GPU, or when AFs differ) equals the popcount path."""
    torch.manual_seed(0)
    layer = PositionwiseEmbedding(d_model=6).eval()
    with torch.no_grad():  # no AF term: with pos=False every site's terms are bitwise equal (Hamming)
        for p in layer.af_mlp.parameters():
            p.zero_()
    kwargs = {"pos": False}
    mask = vs.MaskSchedule(4).window_mask(sim_store, 2, 0, 0.5)
    q = sim_store.window_tokens(2, rows=np.arange(30), mask=mask)
    args = dict(max_seq_len=sim_store.max_seq_len, vocab=sim_store.vocab, ref_af=sim_store.window_af(2))
    alleles = sim_store.window_alleles(2)
    d_pop, i_pop = ExactSearcher(layer, kwargs, method="popcount").search(alleles, q, 16, **args)
    d_mat, i_mat = ExactSearcher(layer, kwargs, method="matmul").search(alleles, q, 16, **args)
    np.testing.assert_array_equal(i_pop, i_mat)
    np.testing.assert_allclose(d_pop, d_mat, rtol=1e-6, atol=1e-6)
    _, bi = _brute_force(sim_store, lambda t, af: layer(t, af=af, pos=False), 2, q, 16)
    np.testing.assert_array_equal(i_pop, bi)
    with pytest.raises(vs.ArgumentError, match="method='popcount' needs per-site terms that are equal"):
        ExactSearcher(_layer(6), method="popcount").search(alleles, q, 4, **args)
