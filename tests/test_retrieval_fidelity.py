"""Retrieval fidelity: both backends return the exact neighbours with real embedding layers, and refuse bad requests.

The oracle is brute force: every reference embedded (masked as the query is), flattened, and
its squared L2 distance to the query computed in float64; equal distances (to float64
rounding) go to the lowest index.
"""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest
import torch

import vcfstore as vs
from tests.helpers import write_vcf
from vcfstore.index import IndexSet
from vcfstore.retrieval import ExactSearcher, PositionwiseEmbedding, VcfBertEmbedding, top_k
from vcfstore.retrieval import embedding as embedding_module
from vcfstore.retrieval import exact_search as es

REGION = "20:1000000-1250000"  # the first ~1,800 sites of the real files
SCHEDULE = vs.MaskSchedule(11)  # AF-guided: p = 0.7 where AF < 0.05, else the rate
POS = {"pos": True}


def _vcfbert(d: int) -> VcfBertEmbedding:
    torch.manual_seed(d)
    return VcfBertEmbedding(d).eval()


def _positionwise(d: int) -> PositionwiseEmbedding:
    torch.manual_seed(d + 1)
    return PositionwiseEmbedding(d).eval()


LAYERS = {  # name: (layer factory, forward_kwargs)
    "vcfbert192": (lambda: _vcfbert(192), POS),
    "vcfbert384": (lambda: _vcfbert(384), POS),
    "positionwise192": (lambda: _positionwise(192), {}),
}


@pytest.fixture(scope="module")
def real_panels(real_data, tmp_path_factory):
    """Reference and phased targets (unphased het calls kept) of the first sites, 100-site windows."""
    d = tmp_path_factory.mktemp("real_fidelity")
    opts = dict(progress=False, window_size=100, max_seq_len=102)
    ref = vs.build_store(vs.VcfSource(real_data / "reference.vcf.gz", region=REGION), d / "ref", **opts)
    keep = vs.InputPolicy(unphased="keep")
    tgt = vs.build_store(vs.VcfSource(real_data / "unphased.vcf.gz", region=REGION, policy=keep), d / "tgt", **opts)
    assert np.array_equal(ref.positions, tgt.positions)  # sites matched by position
    return ref, tgt


@pytest.fixture(scope="module")
def sim_panels(sim_arrays, tmp_path_factory):
    """An msprime panel split into 160 reference and 40 target haplotypes."""
    alleles, positions = sim_arrays
    d = tmp_path_factory.mktemp("sim_fidelity")
    opts = dict(window_size=100, max_seq_len=102)
    return (
        vs.build_from_arrays(alleles[:160], positions, d / "ref", **opts),
        vs.build_from_arrays(alleles[160:], positions, d / "tgt", **opts),
    )


def _embed(layer, tokens, af, kwargs):
    with torch.no_grad():
        a = torch.as_tensor(np.broadcast_to(af, tokens.shape).copy())
        out = [layer(torch.as_tensor(tokens[s : s + 256]), af=a[s : s + 256], **kwargs) for s in range(0, len(a), 256)]
    return torch.cat(out).reshape(len(tokens), -1).numpy().astype(np.float64)


def _oracle(refs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest float64 squared L2 distances; within 1e-12 relative (rounding) by lowest index."""
    out_d, out_i = [], []
    for x in queries:
        diff = refs - x
        d = np.einsum("ij,ij->i", diff, diff)
        order = np.argsort(d, kind="stable")
        group = np.concatenate([[0], np.cumsum(np.diff(d[order]) > 1e-12 * d[order][1:])])
        i = order[np.lexsort((order, group))][:k]
        out_d.append(d[i])
        out_i.append(i)
    return np.array(out_d), np.array(out_i)


def _check_fidelity(ref, tgt, layer, kwargs, windows, rate, tmp_path):
    masks = SCHEDULE.at(ref, 0, rate)
    iset = IndexSet.build(ref, layer, tmp_path / "ix", masks, windows=windows, forward_kwargs=kwargs, progress=False)
    checked = 0
    for w in windows:
        refs = _embed(layer, ref.window_tokens(w, mask=masks[w]), ref.window_af(w), kwargs)
        rows = np.linspace(0, tgt.n_haplotypes - 1, 16).astype(int)
        q = tgt.window_tokens(w, rows=rows, mask=masks[w])
        assert not np.array_equal(tgt.window_af(w), ref.window_af(w))
        for qaf in (None, tgt.window_af(w)):  # query AF equal to and different from the reference AF
            x = _embed(layer, q, ref.window_af(w) if qaf is None else qaf, kwargs)
            bd, bi = _oracle(refs, x, 16)
            for k in (1, 4, 16):
                for backend in ("exact", "faiss"):
                    r = vs.Retriever(ref, layer, k=k, backend=backend, index_set=iset, forward_kwargs=kwargs)
                    d, i = r.search(w, q, qaf)
                    np.testing.assert_array_equal(i, bi[:, :k], err_msg=f"{backend} k={k} window {w}")
                    np.testing.assert_allclose(d, bd[:, :k], rtol=1e-6, atol=1e-6)
                    checked += i.size
    return checked


def _cases(fast):
    every = [(n, r) for n in ("vcfbert192", "positionwise192", "vcfbert384") for r in (0.3, 0.5)]
    return [pytest.param(n, r, id=f"{n}-{r}", marks=() if (n, r) in fast else pytest.mark.slow) for n, r in every]


REAL_FAST = {("vcfbert192", 0.3), ("positionwise192", 0.5)}


@pytest.mark.parametrize(("name", "rate"), _cases(REAL_FAST))
def test_backends_exact_on_real_data(real_panels, name, rate, tmp_path):
    ref, tgt = real_panels
    make, kwargs = LAYERS[name]
    windows = [0, 9] if (name, rate) in REAL_FAST else [9]  # the other settings: one window (time)
    assert _check_fidelity(ref, tgt, make(), kwargs, windows, rate, tmp_path) == len(windows) * 2 * 2 * 16 * 21


@pytest.mark.parametrize(("name", "rate"), _cases({("vcfbert192", 0.5), ("vcfbert384", 0.3)}))
def test_backends_exact_on_msprime_panels(sim_panels, name, rate, tmp_path):
    ref, tgt = sim_panels
    make, kwargs = LAYERS[name]
    assert _check_fidelity(ref, tgt, make(), kwargs, [1, 12], rate, tmp_path) == 2 * 2 * 2 * 16 * 21


# --- the regression: a one-site step below the old tie tolerance ------------------------------------


def _old_faiss_rank(d: np.ndarray, i: np.ndarray, atol: np.ndarray, k: int) -> np.ndarray:
    """The removed rule: FAISS distances within ``atol`` were ties, ranked by lowest index."""
    order = np.argsort(i, axis=1, kind="stable")
    d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
    key = np.round(d.astype(np.float64) / atol)
    return np.take_along_axis(i, np.argsort(key, axis=1, kind="stable")[:, :k], 1)


def _searchers(layer, kwargs):
    return {
        "auto": ExactSearcher(layer, kwargs),
        "matmul": ExactSearcher(layer, kwargs, method="matmul"),
        "torch counts": ExactSearcher(layer, kwargs, engine="torch"),
    }


@pytest.mark.parametrize("name", ["vcfbert192", "positionwise192"])
def test_count_bounds_torch_counts_and_full_sums_agree_bit_for_bit(sim_panels, name):
    """The fast path (popcount bounds, exact sums of the survivors), its torch counting (the GPU path,
    run on the CPU) and the exact sums of every reference give the same indices and distances."""
    ref, tgt = sim_panels
    factory, kwargs = LAYERS[name]
    layer = factory()
    w = 3
    args = dict(max_seq_len=ref.max_seq_len, vocab=ref.vocab, ref_af=ref.window_af(w))
    alleles = ref.window_alleles(w)
    rng = np.random.default_rng(4)
    shared = tgt.window_tokens(w, mask=SCHEDULE.window_mask(ref, w, 0, 0.3))
    own = tgt.window_tokens(w)  # a different mask for every query, down to almost none unmasked (ties)
    for i, rate in enumerate(np.linspace(0.05, 0.97, len(own))):
        own[i, 1:101][rng.random(100) < rate] = ref.vocab.mask
    for queries, qaf in ((shared, None), (own, None), (shared, tgt.window_af(w))):
        for k in (1, 8, len(alleles)):
            found = {
                n: s.search(alleles, queries, k, query_af=qaf, **args) for n, s in _searchers(layer, kwargs).items()
            }
            for n in ("auto", "torch counts"):
                np.testing.assert_array_equal(found[n][1], found["matmul"][1], err_msg=f"{n} k={k}")
                np.testing.assert_array_equal(found[n][0], found["matmul"][0], err_msg=f"{n} k={k}")
    s0, s1 = (
        es.allele_counts(alleles, own[:, 1:101] == ref.vocab.allele0, own[:, 1:101] == ref.vocab.allele1, engine=e)
        for e in ("numpy", "torch")
    )
    np.testing.assert_array_equal(s0, s1)
    expect = ((own[:, None, 1:101] == ref.vocab.allele0) & (alleles[None] == 1)).sum(-1)  # brute-force count
    np.testing.assert_array_equal(s0[0], expect)


def test_popcount_threads_and_words(monkeypatch):
    """Counts over 64-bit words, split across threads and blocks, equal a plain count (odd sizes, sites past a word)."""
    from vcfstore.retrieval import popcount

    monkeypatch.setattr(popcount, "THREAD_REFS", 300)  # small panels split across threads too
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # every core, whatever torch was set to
    rng = np.random.default_rng(0)
    for n_q, n_ref, n_sites in ((3, 5, 1), (40, 700, 130), (64, 2008, 455), (2, 1001, 64)):
        a = rng.random((n_ref, n_sites)) < 0.4
        q = rng.random((n_q, n_sites)) < 0.5
        got = popcount.popcount_and(popcount.pack_words(q), popcount.pack_words(a))
        np.testing.assert_array_equal(got, q.astype(np.int64) @ a.T.astype(np.int64))
    full = np.full((1, 2048), 1, dtype=bool)  # every bit set: 2,048 in a count (no wrap in any narrow type)
    assert popcount.popcount_and(popcount.pack_words(full), popcount.pack_words(full))[0, 0] == 2048
    with pytest.raises(ValueError, match="uint64 rows of equal width"):
        popcount.popcount_and(popcount.pack_words(full), popcount.pack_words(a))


def test_popcount_compiles_without_a_writable_cache(monkeypatch):
    """A read-only install (Numba cannot write its cache) compiles the kernel in the process instead."""
    import numba

    from vcfstore.retrieval import popcount

    njit, asked = numba.njit, []

    def no_cache(*args, **kwargs):
        asked.append(kwargs.get("cache", False))
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function 'and_counts': no locator available")
        return njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", no_cache)
    popcount._kernel.cache_clear()
    try:
        q, a = np.eye(3, 70, dtype=bool), np.ones((5, 70), dtype=bool)
        got = popcount.popcount_and(popcount.pack_words(q), popcount.pack_words(a))
        np.testing.assert_array_equal(got, np.ones((3, 5)))
        assert asked == [True, False]
    finally:
        popcount._kernel.cache_clear()  # the next user compiles (or loads) the usual kernel


def _count(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    from vcfstore.retrieval import popcount

    return popcount.popcount_and(q, ref)


def test_threaded_counts_in_a_forked_worker():
    """A forked worker gets its own counting threads (the parent's pool has none there: it would hang)."""
    from vcfstore.retrieval import popcount

    rng = np.random.default_rng(0)
    q = rng.integers(0, 2**64, (4, 3), dtype=np.uint64)
    ref = rng.integers(0, 2**64, (2 * popcount.THREAD_REFS, 3), dtype=np.uint64)
    expect = popcount.popcount_and(q, ref)  # the parent's pool is running now (on a machine of 2+ cores)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_count, (q, ref)).get(timeout=60)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(expect, np.bitwise_count(q[:, None] & ref[None]).sum(-1))


def test_terms_are_cached_per_weights_version(sim_panels):
    ref, tgt = sim_panels
    layer = _vcfbert(16)
    calls = []
    layer.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    searcher = ExactSearcher(layer, POS)
    q = tgt.window_tokens(2, rows=np.arange(8), mask=SCHEDULE.window_mask(ref, 2, 0, 0.5))
    args = dict(max_seq_len=ref.max_seq_len, vocab=ref.vocab, ref_af=ref.window_af(2))
    first = searcher.search(ref.window_alleles(2), q, 4, **args)
    n = len(calls)
    again = searcher.search(ref.window_alleles(2), q, 4, **args)
    assert len(calls) == n and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    opt = torch.optim.SGD(layer.parameters(), lr=5.0)
    layer.train()
    loss = layer(torch.as_tensor(q[:2]), af=torch.ones(2, q.shape[1]), pos=True).square().sum()
    loss.backward()
    opt.step()  # an optimiser step changes the weights in place
    layer.eval()
    after = searcher.search(ref.window_alleles(2), q, 4, **args)
    assert len(calls) > n + 1  # embedded again
    fresh = ExactSearcher(layer, POS).search(ref.window_alleles(2), q, 4, **args)
    np.testing.assert_array_equal(after[0], fresh[0])
    assert not np.array_equal(after[0], first[0])


@pytest.fixture(scope="module")
def long_window(real_data, tmp_path_factory):
    """One VCF-Bert-sized window (1,020 sites, L = 1,030) of 160 real reference haplotypes, and 32 targets."""
    d = tmp_path_factory.mktemp("long")
    opts = dict(progress=False, window_size=1020, max_seq_len=1030)
    full_ref = vs.build_store(vs.VcfSource(real_data / "reference.vcf.gz", region=REGION), d / "full_ref", **opts)
    keep = vs.InputPolicy(unphased="keep")
    full_tgt = vs.build_store(vs.VcfSource(real_data / "unphased.vcf.gz", region=REGION, policy=keep), d / "t", **opts)
    sites = full_ref.window_sites(0)
    assert np.array_equal(full_ref.positions[sites.start : sites.stop], full_tgt.positions[sites.start : sites.stop])
    pos = full_ref.positions[sites.start : sites.stop]
    return (
        vs.build_from_arrays(full_ref.window_alleles(0, rows=np.arange(160)), pos, d / "ref", **opts),
        vs.build_from_arrays(full_tgt.window_alleles(0, rows=np.arange(32)), pos, d / "tgt", **opts),
    )


def test_one_site_step_below_the_old_tolerance(long_window, tmp_path):
    """The issue's case: at D = 192, L = 1030 the old tie tolerance exceeded ||E[5] - E[6]||^2."""
    ref, tgt = long_window
    layer = _vcfbert(192)
    mask = SCHEDULE.window_mask(ref, 0, 0, 0.3)
    iset = IndexSet.build(ref, layer, tmp_path / "ix", [mask], forward_kwargs=POS, progress=False)
    q = tgt.window_tokens(0, mask=mask)
    refs = _embed(layer, ref.window_tokens(0, mask=mask), ref.window_af(0), POS)
    x = _embed(layer, q, ref.window_af(0), POS)
    step = float(((layer.tokenizer.weight[5] - layer.tokenizer.weight[6]) ** 2).sum().detach())
    old_tolerance = iset.error_bound(0, x.astype(np.float32))  # the removed tie_tolerance: the same formula
    assert (old_tolerance > step).all()
    bd, bi = _oracle(refs, x, ref.n_haplotypes)
    fd, fi = iset.search(0, x.astype(np.float32), ref.n_haplotypes)
    exact = np.take_along_axis(bd, np.argsort(bi, axis=1), 1)  # by reference index
    assert (np.abs(fd - np.take_along_axis(exact, fi, 1)) < step / 4).all()  # FAISS itself is close
    wrong = [(_old_faiss_rank(fd, fi, old_tolerance, k) != bi[:, :k]).any(axis=1).sum() for k in (1, 16)]
    assert wrong[0] >= 1 and wrong[1] >= 24  # the bug, reproduced (measured: 2 and 32 of 32 queries)
    for k in (1, 16):
        for backend in ("exact", "faiss"):
            r = vs.Retriever(ref, layer, k=k, backend=backend, index_set=iset, forward_kwargs=POS)
            np.testing.assert_array_equal(r.search(0, q)[1], bi[:, :k], err_msg=backend)


def test_top_k_ties_only_equal_or_within_the_given_bound():
    d = np.array([[3.0, 1.0, 1.0 + 1e-9, 1.0, 0.5]])
    np.testing.assert_array_equal(top_k(d, 4)[1], [[4, 1, 3, 2]])  # 1+1e-9 is not a tie
    np.testing.assert_array_equal(top_k(d, 4, atol=1e-8)[1], [[4, 1, 2, 3]])
    with pytest.raises(vs.ArgumentError, match=r"k must be in \[1, 5\]"):
        top_k(d, 6)


# --- staleness --------------------------------------------------------------------------------------


@pytest.fixture
def small_index(sim_panels, tmp_path):
    ref, tgt = sim_panels
    layer = _vcfbert(16)
    masks = SCHEDULE.at(ref, 0, 0.5)
    iset = IndexSet.build(ref, layer, tmp_path / "ix", masks, windows=[0, 1], forward_kwargs=POS, progress=False)
    return ref, tgt, layer, masks, iset


def _batch(store, w, mask, n=4):
    t = store.window_tokens(w, rows=np.arange(2 * n), mask=mask)
    return {
        "hap_1": torch.as_tensor(t[0::2]),
        "hap_2": torch.as_tensor(t[1::2]),
        "af": torch.as_tensor(np.tile(store.window_af(w), (n, 1))),
        "window_idx": torch.full((n,), w),
    }


def test_stale_weights_layer_call_and_masks_are_refused(small_index, monkeypatch):
    ref, tgt, layer, masks, iset = small_index
    q = tgt.window_tokens(0, rows=np.arange(4), mask=masks[0])
    retr = vs.Retriever(ref, layer, k=2, backend="faiss", index_set=iset, forward_kwargs=POS)
    calls = []
    real_digest = embedding_module.embedding_digest
    monkeypatch.setattr(embedding_module, "embedding_digest", lambda *a, **kw: calls.append(1) or real_digest(*a, **kw))
    retr.search(0, q)
    retr.augment(_batch(tgt, 1, masks[1]))
    assert len(calls) == 1  # unchanged weights are not hashed again
    with torch.no_grad():
        layer.af_embedding.projection[0].bias.add_(1e-3)  # an optimiser step, in place
    with pytest.raises(vs.StaleIndexError, match="window 0: the index was built with other embedding weights"):
        retr.search(0, q)
    with pytest.raises(vs.StaleIndexError, match="window 1: the index was built with other embedding weights"):
        retr.augment(_batch(tgt, 1, masks[1]))
    assert len(calls) == 2
    with torch.no_grad():
        layer.af_embedding.projection[0].bias.sub_(1e-3)
    layer.load_state_dict(_vcfbert(16).state_dict())  # the same values again: fresh
    retr.search(0, q)

    other = vs.Retriever(ref, _vcfbert(32), k=2, backend="faiss", index_set=iset, forward_kwargs=POS)
    with pytest.raises(vs.StaleIndexError, match="another layer"):
        other.search(0, tgt.window_tokens(0, rows=np.arange(2), mask=masks[0]))
    pw = vs.Retriever(ref, _positionwise(16), k=2, backend="faiss", index_set=iset)
    with pytest.raises(vs.StaleIndexError, match="another layer"):
        pw.search(0, q)
    no_pos = vs.Retriever(ref, layer, k=2, backend="faiss", index_set=iset, forward_kwargs={"pos": False})
    with pytest.raises(vs.StaleIndexError, match="other forward_kwargs"):
        no_pos.search(0, q)
    with pytest.raises(vs.StaleIndexError, match="masked differently"):
        retr.search(0, tgt.window_tokens(0, rows=np.arange(4), mask=SCHEDULE.window_mask(ref, 0, 1, 0.5)))
    with pytest.raises(vs.StaleIndexError, match="masked differently"):
        retr.augment(_batch(tgt, 0, SCHEDULE.window_mask(ref, 0, 1, 0.5)))
    versioned = vs.Retriever(ref, layer, k=2, backend="faiss", index_set=iset, forward_kwargs=POS, weights_version="v1")
    with pytest.raises(vs.StaleIndexError, match="pass the same weights_version"):
        versioned.search(0, q)


def test_weights_version_is_trusted(sim_panels, tmp_path):
    ref, tgt = sim_panels
    layer = _vcfbert(16)
    masks = SCHEDULE.at(ref, 0, 0.5)
    iset = IndexSet.build(
        ref, layer, tmp_path / "ix", masks, windows=[0], forward_kwargs=POS, weights_version="v1", progress=False
    )
    q = tgt.window_tokens(0, rows=np.arange(3), mask=masks[0])
    opts = dict(k=2, backend="faiss", index_set=iset, forward_kwargs=POS)
    vs.Retriever(ref, layer, weights_version="v1", **opts).search(0, q)
    with torch.no_grad():
        layer.tokenizer.weight.add_(1.0)  # trusted: the version string says these are the same weights
    vs.Retriever(ref, layer, weights_version="v1", **opts).search(0, q)
    with pytest.raises(vs.StaleIndexError, match=r"user:v1;pos=True, not user:v2;pos=True"):
        vs.Retriever(ref, layer, weights_version="v2", **opts).search(0, q)


# --- forward_kwargs -------------------------------------------------------------------------------


def test_pos_must_be_stated_for_vcfbert_layer(sim_panels, tmp_path):
    ref, _ = sim_panels
    layer = _vcfbert(16)
    with pytest.raises(vs.ArgumentError, match=r"forward takes `pos` and its output depends on it"):
        vs.Retriever(ref, layer, k=2)
    with pytest.raises(vs.ArgumentError, match=r"forward_kwargs=\{'pos': True\}"):
        IndexSet.build(ref, layer, tmp_path / "ix", SCHEDULE.at(ref, 0, 0.5), windows=[0], progress=False)
    vs.Retriever(ref, layer, k=2, forward_kwargs={"pos": False})  # stated: allowed
    vs.Retriever(ref, _positionwise(16), k=2)  # pos defaults to True there: nothing to state


# --- bad inputs -----------------------------------------------------------------------------------


@pytest.fixture
def exact_retriever(sim_panels):
    ref, tgt = sim_panels
    return ref, tgt, vs.Retriever(ref, _vcfbert(16), k=3, backend="exact", forward_kwargs=POS)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.nan, "NaN or infinite allele frequencies"),
        (np.inf, "NaN or infinite allele frequencies"),
        (1.5, r"outside \[0, 1\]"),
        (-0.1, r"outside \[0, 1\]"),
    ],
)
def test_bad_allele_frequencies_in_a_batch_or_query(exact_retriever, bad, message):
    ref, tgt, retr = exact_retriever
    mask = SCHEDULE.window_mask(ref, 2, 0, 0.5)
    batch = _batch(tgt, 2, mask)
    batch["af"][:, 5] = bad
    with pytest.raises(vs.ArgumentError, match=message):
        retr.augment(batch)
    qaf = ref.window_af(2).copy()
    qaf[3] = bad
    with pytest.raises(vs.ArgumentError, match=message):
        retr.search(2, tgt.window_tokens(2, rows=np.arange(2), mask=mask), qaf)


def test_bad_query_tokens_k_and_batches(exact_retriever):
    ref, tgt, retr = exact_retriever
    mask = SCHEDULE.window_mask(ref, 2, 0, 0.5)
    q = tgt.window_tokens(2, rows=np.arange(4), mask=mask)
    for token, where in ((9, 5), (1, 5), (0, 3)):  # outside the vocabulary, unk, pad at a site
        bad = q.copy()
        bad[2, where] = token
        with pytest.raises(vs.ArgumentError, match=f"query row 2 holds token {token} at site position {where}"):
            retr.search(2, bad)
    bad = q.copy()
    bad[1, 0] = 5
    with pytest.raises(vs.ArgumentError, match="holds token 5 at position 0, expected 2"):
        retr.search(2, bad)
    with pytest.raises(vs.ArgumentError, match=r"query tokens have shape \(4, 101\); expected \[n, 102\]"):
        retr.search(2, q[:, :-1])
    with pytest.raises(vs.ArgumentError, match="must be integer token ids, not float32"):
        retr.search(2, q.astype(np.float32))
    with pytest.raises(vs.ArgumentError, match="no query rows"):
        retr.search(2, q[:0])
    with pytest.raises(vs.ArgumentError, match="the batch is empty"):
        retr.augment({key: v[:0] for key, v in _batch(tgt, 2, mask).items()})
    with pytest.raises(vs.ArgumentError, match="query_af has shape"):
        retr.search(2, q, ref.window_af(2)[:-1])
    batch = _batch(tgt, 2, mask)
    batch["af"][1, 4] = 0.25
    with pytest.raises(vs.ArgumentError, match="window 2 have different af rows"):
        retr.augment(batch)
    batch = _batch(tgt, 2, mask)
    batch["hap_2"] = batch["hap_2"][:, :-1]
    with pytest.raises(vs.ArgumentError, match=r"batch\['hap_2'\] has shape"):
        retr.augment(batch)
    batch = _batch(tgt, 2, mask)
    batch["window_idx"] = batch["window_idx"].float()
    with pytest.raises(vs.ArgumentError, match="window_idx must hold integer"):
        retr.augment(batch)
    for k, message in ((2.5, "k must be an integer"), (True, "k must be an integer"), (0, r"k must be in \[1, 160\]")):
        with pytest.raises(vs.ArgumentError, match=message):
            vs.Retriever(ref, _vcfbert(16), k=k, forward_kwargs=POS)
    with pytest.raises(vs.ArgumentError, match=r"k must be in \[1, 160\], not 161"):
        vs.Retriever(ref, _vcfbert(16), k=161, forward_kwargs=POS)


def test_no_index_minus_one_from_non_finite_queries(sim_panels, tmp_path):
    ref, tgt = sim_panels
    layer = _vcfbert(16)
    masks = SCHEDULE.at(ref, 0, 0.5)
    iset = IndexSet.build(
        ref, layer, tmp_path / "ix", masks, windows=[0], forward_kwargs=POS, weights_version="w", progress=False
    )
    with pytest.raises(vs.IndexSetError, match="query vectors hold NaN or infinite values"):
        iset.search_exact(0, np.full((1, iset.dim), np.nan, np.float32), 1)  # FAISS would answer label -1
    with torch.no_grad():
        layer.tokenizer.weight[5, 0] = float("nan")
    q = tgt.window_tokens(0, rows=np.arange(2), mask=masks[0])
    faiss_retr = vs.Retriever(ref, layer, k=1, backend="faiss", index_set=iset, forward_kwargs=POS, weights_version="w")
    with pytest.raises(vs.VcfstoreError, match="returned NaN or infinite values for these queries"):
        faiss_retr.search(0, q)
    with pytest.raises(vs.VcfstoreError, match="returned NaN or infinite values for this window"):
        vs.Retriever(ref, layer, k=1, backend="exact", forward_kwargs=POS).search(0, q)


def test_bad_allele_frequencies_at_build(sim_arrays, tmp_path):
    alleles, positions = sim_arrays
    n = alleles.shape[1]
    for value, message in ((np.nan, "nan at site 7"), (np.inf, "inf at site 7"), (1.2, "1.2 at site 7")):
        af = np.full(n, 0.5)
        af[7] = value
        with pytest.raises(vs.InputError, match=f"supplied allele frequencies hold {message}"):
            vs.build_from_arrays(alleles, positions, tmp_path / f"s{value}", af=af)
    recs = [("1", 100, ".", "A", "G", ["0|1", "1|1"], "AF=0.75"), ("1", 200, ".", "A", "G", ["0|1", "0|0"], "AF=1.5")]
    vcf = write_vcf(tmp_path / "bad_af.vcf", recs)
    with pytest.raises(vs.InputError, match=r"site 1:200 has INFO/AF 1.5, outside \[0, 1\]"):
        vs.build_store(vs.VcfSource(vcf), tmp_path / "v", af_from="info", progress=False, window_size=2, max_seq_len=4)


def test_popcount_switch_is_public():
    with pytest.raises(vs.ArgumentError, match="method must be one of"):
        ExactSearcher(_vcfbert(16), POS, method="fast")


def test_tie_tolerance_is_a_deprecated_name_of_error_bound(small_index):
    _, _, _, _, iset = small_index
    x = np.ones((2, iset.dim), np.float32)
    with pytest.warns(DeprecationWarning, match="use error_bound"):
        np.testing.assert_array_equal(iset.tie_tolerance(0, x), iset.error_bound(0, x))
