"""Biobank scale, small: sharded stores read as the arrays and as format 2 did, bulk tree-sequence
decoding, the bounded-memory build (measured from outside), the exact search at N = 20,000 against
a float64 brute force, the FAISS refusal, importing without zarr, and the exact search on CUDA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import vcfstore as vs
from tests.helpers import ROOT

FORMAT2 = ROOT / "tests" / "data" / "format2.vcfstore"  # written by vcfstore 0.1.0 (format 2)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


cuda = pytest.mark.skipif(not _has_cuda(), reason="needs a CUDA device (benchmarks/gpu_check.sh runs these)")


def _mosaic(n: int, n_sites: int, seed: int) -> np.ndarray:
    """Haplotypes copied in runs of 50 sites from 8 founders with 1 % noise: many exact ties."""
    rng = np.random.default_rng(seed)
    founders = rng.integers(0, 2, (8, n_sites), dtype=np.uint8)
    who = rng.integers(0, 8, (n, -(-n_sites // 50))).repeat(50, axis=1)[:, :n_sites]
    return founders[who, np.arange(n_sites)] ^ (rng.random((n, n_sites)) < 0.01).astype(np.uint8)


# --- the sharded layout -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("haplotype_chunk", "chunk_sites", "inner"),
    [(16, 64, 16), (64, 128, 64), (100, 256, 200), (10_000, 2048, 200)],  # up to 2x: one inner chunk
)
def test_sharded_store_reads_as_the_arrays(sim_arrays, tmp_path, haplotype_chunk, chunk_sites, inner):
    alleles, positions = sim_arrays
    store = vs.build_from_arrays(
        alleles, positions, tmp_path / "s", window_size=300, chunk_sites=chunk_sites, haplotype_chunk=haplotype_chunk
    )
    assert store.meta["format_version"] == 3 and store.verify() == []
    meta = json.loads((store.path / "alleles" / "zarr.json").read_text())
    assert meta["codecs"][0]["name"] == "sharding_indexed"
    assert meta["codecs"][0]["configuration"]["chunk_shape"] == [inner, chunk_sites // 8]
    np.testing.assert_array_equal(store.read_alleles(0, store.n_sites), alleles)
    rng = np.random.default_rng(1)
    for _ in range(60):
        start = int(rng.integers(0, store.n_sites))
        stop = int(rng.integers(start, min(store.n_sites, start + 700) + 1))
        rows = rng.integers(0, 200, int(rng.integers(1, 40)))  # any order, repeats
        want = alleles[rows, start:stop]
        np.testing.assert_array_equal(store.read_alleles(start, stop, rows), want)
        np.testing.assert_array_equal(store.read_packed(start, stop, rows), np.packbits(want, axis=1))
    for w in range(store.n_windows):
        s = store.window_sites(w)
        np.testing.assert_array_equal(store.window_packed(w), np.packbits(alleles[:, s.start : s.stop], axis=1))
    # Zarr's own read of the same array, through the verifying store, agrees.
    z = store.root["alleles"]
    np.testing.assert_array_equal(np.unpackbits(z[:], axis=1)[:, : store.n_sites], alleles)
    np.testing.assert_array_equal(z.oindex[[3, 150], 2:9], np.packbits(alleles, axis=1)[[3, 150], 2:9])


def test_format2_stores_still_read_as_written():
    import zarr

    old = vs.open_store(FORMAT2)
    assert old.meta["format_version"] == 2 and old.verify() == []
    # The oracle: the file's bytes through plain Zarr, unpacked by hand.
    raw = zarr.open_array(str(FORMAT2 / "alleles"), mode="r")[:]
    alleles = np.unpackbits(raw, axis=1)[:, : old.n_sites]
    np.testing.assert_array_equal(old.read_alleles(0, old.n_sites), alleles)
    rows = np.array([5, 2, 5])
    np.testing.assert_array_equal(old.window_alleles(1, rows), alleles[rows][:, old.window_sites(1)])


def test_format2_and_format3_serve_the_same_windows(tmp_path):
    old = vs.open_store(FORMAT2)
    new = vs.build_from_arrays(
        old.read_alleles(0, old.n_sites), old.positions, tmp_path / "s", window_size=250, haplotype_chunk=16
    )
    mask = np.zeros(old.max_seq_len, bool)
    mask[1:40] = True
    rows = np.arange(0, 40, 3)
    for w in range(old.n_windows):
        np.testing.assert_array_equal(new.window_tokens(w), old.window_tokens(w))
        np.testing.assert_array_equal(new.window_tokens(w, rows, mask), old.window_tokens(w, rows, mask))
        np.testing.assert_array_equal(new.window_af(w), old.window_af(w))


def test_damage_inside_a_shard_is_caught_where_it_is_read(sim_arrays, tmp_path):
    alleles, positions = sim_arrays
    path = tmp_path / "s"
    vs.build_from_arrays(alleles, positions, path, window_size=300, chunk_sites=256, haplotype_chunk=32)
    shard = path / "alleles" / "c" / "0" / "1"
    data = bytearray(shard.read_bytes())
    n_inner = -(-200 // 32)
    index = np.frombuffer(bytes(data[-(16 * n_inner + 4) : -4]), "<u8").reshape(-1, 2)
    offset, nbytes = (int(x) for x in index[2])  # inner chunk 2: haplotypes 64..95
    data[offset + nbytes // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    store = vs.open_store(path)
    sites = (256, 512)  # shard 1
    np.testing.assert_array_equal(store.read_alleles(*sites, np.array([0, 100, 199])), alleles[[0, 100, 199], 256:512])
    with pytest.raises(vs.StoreError, match=r"array alleles, chunk \(0, 1\), inner chunk 2 is damaged"):
        store.read_alleles(*sites, np.array([70]))
    with pytest.raises(vs.StoreError, match=r"array alleles, chunk \(0, 1\) is damaged"):
        store.read_alleles(*sites)  # the whole shard: its file's digest
    with pytest.raises(vs.StoreError, match=r"inner chunk 2 is damaged"):
        store.root["alleles"].oindex[[70], 40:50]  # Zarr's own partial read, through the verifying store
    assert any("chunk (0, 1)" in p for p in store.verify())
    # A damaged index is caught before any of its offsets is used.
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(vs.StoreError, match=r"its shard index is damaged"):
        vs.open_store(path).read_alleles(*sites, np.array([0]))
    # A shard cut short, replaced by a directory, or gone: named where it is read, never served as data.
    shard.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(vs.StoreError, match=r"chunk \(0, 1\): its shard index is damaged"):
        vs.open_store(path).read_alleles(*sites, np.array([0]))
    shard.unlink()
    shard.mkdir()
    with pytest.raises(vs.StoreError, match=r"chunk \(0, 1\) is missing"):
        vs.open_store(path).read_alleles(*sites, np.array([0]))
    shard.rmdir()
    with pytest.raises(vs.StoreError, match=r"chunk \(0, 1\) is missing"):
        vs.open_store(path).read_alleles(*sites, np.array([0]))


# --- tree sequences -------------------------------------------------------------------------------
def test_tree_sequence_source_decodes_in_bulk_like_the_genotype_matrix(tmp_path):
    import msprime

    ts = msprime.sim_ancestry(60, population_size=1e4, sequence_length=3e5, recombination_rate=1e-8, random_seed=3)
    ts = msprime.sim_mutations(ts, rate=4e-8, random_seed=4)  # Jukes-Cantor: some sites have 3 or 4 alleles
    g = ts.genotype_matrix()
    n_alleles = np.array([v.num_alleles for v in ts.variants()])
    assert (n_alleles > 2).any()
    # Oracle: the split policy, one site per ALT allele.
    want = np.array([g[i] == a for i, k in enumerate(n_alleles) for a in range(1, max(k, 2))], np.uint8)
    nodes = np.arange(20, 100)
    for kw, rows in (({}, slice(None)), ({"nodes": nodes}, nodes)):
        source = vs.TreeSequenceSource(ts, **kw)
        store = vs.build_store(source, tmp_path / f"s{len(kw)}", window_size=500, block_sites=37, progress=False)
        np.testing.assert_array_equal(store.read_alleles(0, store.n_sites), want[:, rows].T)
        assert store.meta["counts"]["split_multiallelic"] == int((n_alleles > 2).sum())
        assert store.meta["counts"]["records"] == ts.num_sites


_BUILD = """
import json, sys, numpy as np, tskit, vcfstore as vs
from vcfstore.memory.meters import StatmMeter
ts = tskit.load(sys.argv[1])
before = StatmMeter().read().anon
vs.build_store(vs.TreeSequenceSource(ts), sys.argv[2], chunk_sites=512, block_sites=128, haplotype_chunk=1024,
               zstd_level=3, progress=False)
print(json.dumps({"before": before}))
"""


@pytest.mark.slow
def test_build_from_a_tree_sequence_stays_in_its_memory_bound(tmp_path):
    """40,000 haplotypes: the build's peak, sampled from outside, stays within the stated bound and
    does not grow with the panel's length (2x the sites)."""
    from vcfstore.simulate import simulate_panel
    from vcfstore.store.builder import build_memory_bound
    from vcfstore.testing import run_measured

    n_hap = 40_000
    bound = build_memory_bound(n_hap, chunk_sites=512, block_sites=128, source="tree-sequence")
    peaks = []
    for length in (2e5, 4e5):
        ts_path = tmp_path / f"{length:.0f}.trees"
        simulate_panel(n_hap // 2, length, seed=5).dump(ts_path)
        run = run_measured([sys.executable, "-c", _BUILD, str(ts_path), str(tmp_path / f"{length:.0f}")], timeout=300)
        assert run.returncode == 0, run.stderr
        grew = run.peak_anon - json.loads(run.stdout)["before"]
        peaks.append(grew)
        assert grew < bound, f"the build took {grew / 1e6:.0f} MB, more than the bound {bound / 1e6:.0f} MB"
    assert peaks[1] < peaks[0] * 1.25 + (8 << 20), peaks


# --- exact search at N = 20,000 -------------------------------------------------------------------
def test_exact_search_equals_brute_force_at_20k(tmp_path):
    """48 masked held-out haplotypes against 20,000 of an msprime panel (few sites, D = 16)."""
    import torch

    from vcfstore.retrieval import VcfBertEmbedding
    from vcfstore.simulate import simulate_panel

    ts = simulate_panel(10_024, 20_000, seed=3)
    n_hap = 20_000
    source = vs.TreeSequenceSource(ts, nodes=np.arange(n_hap))
    store = vs.build_store(source, tmp_path / "s", window_size=128, max_seq_len=130, progress=False)
    held = ts.genotype_matrix(samples=np.arange(n_hap, n_hap + 48)).T.astype(np.uint8)[:, store.window_sites(0)]
    assert len(store.window_sites(0)) > 64
    mask = vs.MaskSchedule(1).window_mask(store, 0, 0, 0.5)
    queries = vs.store.layout_tokens(held, store.max_seq_len, store.vocab, mask)
    torch.manual_seed(0)
    layer = VcfBertEmbedding(16, max_len=store.max_seq_len)
    retriever = vs.Retriever(store, layer, k=8, backend="exact", forward_kwargs={"pos": True})
    dist, idx = retriever.search(0, queries)

    # Brute force: every reference embedded masked like the queries, float64 distances.
    with torch.no_grad():
        layer.eval()
        af = torch.as_tensor(store.window_af(0))[None]
        q = layer(torch.as_tensor(queries), af=af.expand(48, -1), pos=True).double().reshape(48, -1)
        d = torch.empty((48, n_hap), dtype=torch.float64)
        for s in range(0, n_hap, 2000):
            ref = torch.as_tensor(store.window_tokens(0, np.arange(s, min(s + 2000, n_hap)), mask))
            r = layer(ref, af=af.expand(len(ref), -1), pos=True).double().reshape(len(ref), -1)
            d[:, s : s + len(ref)] = torch.cdist(q, r) ** 2
    d = d.numpy()
    want = np.lexsort((np.broadcast_to(np.arange(n_hap), d.shape), d), axis=-1)[:, :8]  # ties: lowest index
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_allclose(dist, np.take_along_axis(d, want, 1), rtol=1e-5, atol=1e-3)
    # Exact ties (identical haplotypes at the unmasked sites) occur here, and went to the lowest index.
    assert any(len(np.unique(row)) < len(row) for row in np.take_along_axis(d, want, 1))


# --- the FAISS backend at scale: refused up front ---------------------------------------------------
def test_index_set_build_refuses_an_index_it_cannot_hold(sim_store, tmp_path, monkeypatch):
    import vcfstore.index.index_set as index_set
    from vcfstore.retrieval import PositionwiseEmbedding

    layer = PositionwiseEmbedding(8, max_len=sim_store.max_seq_len)
    masks = vs.MaskSchedule(1).at(sim_store, 0, 0.3)
    L = sim_store.max_seq_len
    per_window = 200 * L * 8 * 4
    monkeypatch.setattr(index_set, "MAX_WINDOW_INDEX_BYTES", per_window - 1)
    want = rf"one window needs 200 haplotypes x {L} x 8 x 4 bytes = {per_window / 1e6:.1f} MB"
    with pytest.raises(vs.IndexSetError, match=want):
        vs.IndexSet.build(sim_store, layer, tmp_path / "ix", masks, "flat", progress=False)
    assert not list((tmp_path / "ix").glob("*.faiss"))
    monkeypatch.setattr(index_set, "MAX_WINDOW_INDEX_BYTES", 64 << 30)
    free = shutil.disk_usage(tmp_path)._replace(free=per_window)
    monkeypatch.setattr(index_set.shutil, "disk_usage", lambda _: free)
    with pytest.raises(vs.IndexSetError, match=r"for \d+ windows; 6\.6 MB free in .*backend='exact'"):
        vs.IndexSet.build(sim_store, layer, tmp_path / "ix", masks, "flat", progress=False)
    # fp16 halves the need: one window's index fits now.
    monkeypatch.setattr(index_set, "MAX_WINDOW_INDEX_BYTES", per_window // 2)
    monkeypatch.setattr(index_set.shutil, "disk_usage", lambda _: free._replace(free=1 << 40))
    built = vs.IndexSet.build(sim_store, layer, tmp_path / "ix2", masks, "fp16", windows=[0], progress=False)
    assert built.manifest.windows


# --- the GPU path needs torch and numpy only ---------------------------------------------------------
_BLOCKED = ("zarr", "numcodecs", "msprime", "tskit", "faiss", "cyvcf2", "bio2zarr", "psutil", "matplotlib")


def test_exact_search_and_the_gpu_benchmark_import_without_zarr_or_faiss():
    code = (
        f"import sys, runpy\nfor m in {_BLOCKED!r}: sys.modules[m] = None\n"
        "import vcfstore, vcfstore.retrieval.exact_search\n"
        "sys.argv = ['scale', '--gpu-only', '--sizes', '100']\n"
        "runpy.run_module('benchmarks.scale', run_name='__main__')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    import torch

    if torch.cuda.is_available():
        assert r.returncode == 0, r.stderr
    else:  # a clear refusal, not an ImportError
        assert r.returncode != 0 and "--gpu-only needs CUDA" in r.stderr, r.stderr
        assert "ImportError" not in r.stderr and "ModuleNotFoundError" not in r.stderr


def _search(
    device: str,
    n: int,
    n_sites: int,
    *,
    seed: int,
    positionwise_terms: bool,
    packed: bool = False,
    method: str = "auto",
    engine: str = "auto",
) -> tuple:
    """48 masked mosaic queries against ``n`` mosaic references on ``device``, K = 8.

    ``positionwise_terms``: VCF-Bert's layer with its position and AF terms (per-site terms that
    differ by float32 rounding); else without them, at one AF for every site, so every site's
    terms are bitwise equal and distances are exactly c x the masked Hamming distance.
    ``packed``: the references given bit-packed (:class:`PackedAlleles`).
    """
    import torch

    from vcfstore.retrieval import ExactSearcher, PackedAlleles, VcfBertEmbedding
    from vcfstore.store.vocab import Vocabulary, layout_tokens

    vocab = Vocabulary()
    alleles = _mosaic(n + 48, n_sites, seed=seed)
    refs, held = alleles[:n], alleles[n:]
    af = np.full(n_sites + 2, 0.3, np.float32)
    if positionwise_terms:
        af[1:-1] = refs.mean(0)
    mask = np.zeros(n_sites + 2, bool)
    mask[1:-1] = np.random.default_rng(seed).random(n_sites) < 0.5
    queries = layout_tokens(held, n_sites + 2, vocab, mask)
    torch.manual_seed(0)
    layer = VcfBertEmbedding(64, max_len=n_sites + 2).to(device)
    searcher = ExactSearcher(layer, {"pos": positionwise_terms}, device=device, method=method, engine=engine)
    given = PackedAlleles(np.packbits(refs, axis=1), n_sites) if packed else refs
    dist, idx = searcher.search(given, queries, 8, max_seq_len=n_sites + 2, vocab=vocab, ref_af=af)
    return dist, idx, refs, held, ~mask[1:-1]


def test_exact_search_on_packed_references_at_20k_is_exact():
    """Above THREAD_REFS the counts are split across threads; packed or not, the result is exact.

    Bitwise-equal terms: the indices equal an integer brute force (ties by lowest index). VCF-Bert's
    terms: packed and uint8 references, by the count bounds, equal the exact sums of every reference.
    """
    from vcfstore.retrieval import popcount

    n = 20_000
    assert n > popcount.THREAD_REFS
    _, idx, refs, held, keep = _search("cpu", n, 150, seed=5, positionwise_terms=False, packed=True)
    hamming = ((refs[None, :, keep] != held[:, None, keep]).sum(-1)).astype(np.int64)
    want = np.lexsort((np.broadcast_to(np.arange(n), hamming.shape), hamming), axis=-1)[:, :8]
    np.testing.assert_array_equal(idx, want)
    found = [_search("cpu", n, 150, seed=6, positionwise_terms=True, packed=p) for p in (True, False)]
    every = _search("cpu", n, 150, seed=6, positionwise_terms=True, method="matmul")
    for dist, idx, *_ in found:
        np.testing.assert_array_equal(idx, every[1])
        np.testing.assert_array_equal(dist, every[0])


def test_pair_sums_over_distinct_rows_equal_the_sums_of_every_reference():
    """Candidates that are copies of a few haplotypes are summed once per distinct row, packed or not."""
    from vcfstore.retrieval import PackedAlleles
    from vcfstore.retrieval import exact_search as es

    rng = np.random.default_rng(3)
    few = rng.integers(0, 2, (5, 77), dtype=np.uint8)
    alleles = few[rng.integers(0, 5, 20_000)]  # 20,000 references, 5 distinct rows
    alleles[::997] = rng.integers(0, 2, (len(alleles[::997]), 77))  # and a few unique ones
    w = rng.normal(size=(6, 77)) * (rng.random((6, 77)) < 0.6)
    hi, lo, g1, g2 = es.exact_site_sums(w, alleles)  # every reference, in blocks of EXACT_BLOCK
    assert len(alleles) > es.EXACT_BLOCK
    np.testing.assert_allclose(hi * g1 + lo * g2, w @ alleles.T.astype(np.float64), rtol=1e-12, atol=1e-9)
    rows, cols = np.nonzero(rng.random((6, 20_000)) < 0.3)
    for given in (alleles, PackedAlleles(np.packbits(alleles, axis=1), 77)):
        reps, group = es.distinct_rows(given, cols)
        np.testing.assert_array_equal(alleles[reps[group]], alleles[cols])
        assert len(reps) == len(np.unique(alleles[np.unique(cols)], axis=0))
        phi, plo, *_ = es.exact_pair_sums(w, given, rows, cols)
        np.testing.assert_array_equal(phi, hi[rows, cols])
        np.testing.assert_array_equal(plo, lo[rows, cols])


def test_device_pair_sums_equal_the_hosts_bit_for_bit(monkeypatch):
    """The torch engine sums its candidates where its counts are, pair by pair and in chunks: the
    same integer pairs as the host's sums per distinct row, packed or not."""
    import torch

    from vcfstore.retrieval import PackedAlleles, device_search
    from vcfstore.retrieval import exact_search as es

    monkeypatch.setattr(device_search, "PAIR_CHUNK", 100)
    rng = np.random.default_rng(8)
    alleles = rng.integers(0, 2, (5_000, 203), dtype=np.uint8)
    w = rng.normal(size=(7, 203)) * (rng.random((7, 203)) < 0.7)
    rows, cols = np.nonzero(rng.random((7, 5_000)) < 0.05)
    want = es.exact_pair_sums(w, alleles, rows, cols)
    for given in (alleles, PackedAlleles(np.packbits(alleles, axis=1), 203)):
        got = es.exact_pair_sums(w, given, rows, cols, device=torch.device("cpu"))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_smallest_pairs_equal_a_full_partition():
    from vcfstore.retrieval import exact_search as es

    rng = np.random.default_rng(0)
    x = rng.integers(-40, 40, (6, 30_000)).astype(np.int32)  # many ties
    x[1, :5000] = -50  # a row whose first columns hold its smallest value, 5,000 times
    x[2] = np.arange(30_000)[::-1]  # one whose first columns are its largest: the rows are partitioned whole
    for k in (1, 8, 300):
        kth, rows, cols = es.smallest_pairs(x, k)
        want = np.partition(x, k - 1, axis=1)[:, k - 1]
        np.testing.assert_array_equal(kth, want)
        want_rows, want_cols = np.nonzero(x <= want[:, None])
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(cols, want_cols)


def test_packed_alleles_refuse_a_wrong_shape():
    from vcfstore.retrieval import PackedAlleles

    with pytest.raises(vs.ArgumentError, match=r"packed alleles must be uint8 \[n_ref, 13\]"):
        PackedAlleles(np.zeros((4, 12), np.uint8), 100)


@cuda
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("n", [2_000, 20_000])
def test_exact_search_on_cuda_finds_the_cpus_neighbours(n, packed):
    """VCF-Bert's layer: the same distances, and the same neighbours up to float32 rounding.

    CUDA's float32 embeddings round differently from the CPU's, so references whose distances
    differ only by that rounding (here: at the same Hamming distance) may come in another order.
    """
    from benchmarks.scale import compare

    cpu = _search("cpu", n, 300, seed=n, positionwise_terms=True, packed=packed)
    gpu = _search("cuda", n, 300, seed=n, positionwise_terms=True, packed=packed)
    assert compare(cpu[:2], gpu[:2])["neighbours_agree"]


@cuda
@pytest.mark.parametrize("packed", [False, True])
def test_exact_search_on_cuda_breaks_exact_ties_by_lowest_index(packed):
    """Bitwise-equal per-site terms: distances are c x the masked Hamming distance, with many exact
    ties; CUDA, the CPU and an integer brute force must give the very same indices."""
    n = 5_000
    _, idx_gpu, refs, held, keep = _search("cuda", n, 300, seed=7, positionwise_terms=False, packed=packed)
    _, idx_cpu, *_ = _search("cpu", n, 300, seed=7, positionwise_terms=False, packed=packed)
    hamming = ((refs[None, :, keep] != held[:, None, keep]).sum(-1)).astype(np.int64)
    want = np.lexsort((np.broadcast_to(np.arange(n), hamming.shape), hamming), axis=-1)[:, :8]
    np.testing.assert_array_equal(idx_cpu, want)
    np.testing.assert_array_equal(idx_gpu, want)
    assert (np.take_along_axis(hamming, want, 1)[:, 1:] == np.take_along_axis(hamming, want, 1)[:, :-1]).any()


@cuda
def test_the_window_stays_on_cuda_between_searches():
    """Batch after batch of one window (the cache's frozen array), the packed bits are copied to the
    GPU once, by the counting and the candidates' sums alike; another window replaces them."""
    import torch

    from vcfstore.retrieval import ExactSearcher, PackedAlleles, VcfBertEmbedding
    from vcfstore.store.vocab import Vocabulary, layout_tokens

    vocab, n_sites = Vocabulary(), 300
    refs = _mosaic(5_048, n_sites, seed=2)
    bits = np.packbits(refs[:5_000], axis=1)
    bits.flags.writeable = False
    mask = np.zeros(n_sites + 2, bool)
    mask[1:-1] = np.random.default_rng(2).random(n_sites) < 0.5
    queries = layout_tokens(refs[5_000:], n_sites + 2, vocab, mask)
    af = np.zeros(n_sites + 2, np.float32)
    af[1:-1] = refs.mean(0)
    layer = VcfBertEmbedding(64, max_len=n_sites + 2).to("cuda")
    searcher = ExactSearcher(layer, {"pos": True}, device="cuda")
    args = dict(max_seq_len=n_sites + 2, vocab=vocab, ref_af=af)
    first = searcher.search(PackedAlleles(bits, n_sites), queries, 8, **args)
    held = searcher.resident._held[1]
    assert held is not None and searcher.resident.nbytes == bits.nbytes
    again = searcher.search(PackedAlleles(bits, n_sites), queries, 8, **args)
    assert searcher.resident._held[1] is held
    np.testing.assert_array_equal(first[1], again[1])
    other = bits.copy()
    other.flags.writeable = False
    searcher.search(PackedAlleles(other, n_sites), queries, 8, **args)
    assert searcher.resident._held[1] is not held and torch.equal(searcher.resident._held[1], held)


def test_gpu_check_script_parses_and_installs_nothing():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "benchmarks.scale --gpu-only" in script and "-k cuda" in script
    assert not any(word in script for word in ("pip ", "conda ", "apt-get", "uv "))
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0


def test_read_peak_bytes_bound_what_a_read_allocates(sim_arrays, tmp_path):
    """Whole-panel reads, aligned to a byte or not, allocate at most what the window cache admits for them."""
    import tracemalloc

    alleles, positions = sim_arrays
    store = vs.build_from_arrays(alleles, positions, tmp_path / "s", chunk_sites=256, haplotype_chunk=32)
    store.read_packed(0, 8)  # open the arrays first: what they keep is not the read's
    for start, stop in ((0, 300), (3, 700), (250, 251), (5, 13), (255, 257), (250, 262), (0, store.n_sites)):
        tracemalloc.start()
        got = store.read_packed(start, stop)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert got.nbytes < peak <= store.read_peak_bytes(start, stop), (start, stop, peak)


def test_pair_sums_hold_a_block_of_distinct_rows_at_a_time():
    """Thousands of distinct candidate rows are converted EXACT_BLOCK at a time: within working_bytes."""
    import tracemalloc

    from vcfstore.retrieval import ExactSearcher, PackedAlleles
    from vcfstore.retrieval import exact_search as es

    rng = np.random.default_rng(8)
    n_ref, n_sites = 20_000, 1028
    alleles = PackedAlleles(np.packbits(rng.integers(0, 2, (n_ref, n_sites), dtype=np.uint8), axis=1), n_sites)
    w = rng.normal(size=(2, n_sites))
    rows, cols = np.repeat([0, 1], 5000), np.tile(np.arange(0, n_ref, 4), 2)  # 5,000 distinct rows a query
    tracemalloc.start()
    hi, lo, g1, g2 = es.exact_pair_sums(w, alleles, rows, cols)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < ExactSearcher.working_bytes(2, n_ref, n_sites), peak
    every = es.exact_site_sums(w, alleles)
    np.testing.assert_array_equal(hi * g1 + lo * g2, every[0][rows, cols] * every[2] + every[1][rows, cols] * every[3])


@pytest.mark.parametrize("int8", [False, True])
def test_torch_counts_unpack_packed_references_alike(monkeypatch, int8):
    """The torch engine takes packed references as they are (unpacked on its device): the same counts.

    ``int8``: CUDA's product (int8 operands padded to multiples of 8, at least 32 rows), run on
    the CPU, in chunks that end mid-panel and panels that are no multiple of 8.
    """
    import torch

    from vcfstore.retrieval import PackedAlleles, device_search
    from vcfstore.retrieval import exact_search as es

    monkeypatch.setattr(device_search, "_int8_product", lambda device: int8)
    monkeypatch.setattr(device_search, "DEVICE_CHUNK", 128)
    rng = np.random.default_rng(9)
    for n_sites, n_q in ((1, 1), (13, 5), (64, 17), (1028, 40)):
        refs = rng.integers(0, 2, (301, n_sites), dtype=np.uint8)
        q0, q1 = rng.random((2, n_q, n_sites)) < 0.4
        q1 &= ~q0
        packed = PackedAlleles(np.packbits(refs, axis=1), n_sites)
        want = es.allele_counts(refs, q0, q1, engine="numpy")
        brute = ((q0[:, None] | q1[:, None]) & (refs[None] == 1)).sum(-1)
        np.testing.assert_array_equal(want[0] + want[1], brute)
        for given in (packed, refs):
            got = es.allele_counts(given, q0, q1, engine="torch")
            assert all(isinstance(g, torch.Tensor) and g.dtype == torch.int32 for g in got)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_resident_bits_are_reused_only_for_the_very_same_read_only_array(monkeypatch):
    """The packed window stays on the device between searches only while it is the same frozen array:
    a writeable array (which may change) or another array is copied again, never answered stale."""
    import gc

    import torch

    from vcfstore.retrieval.device_search import ResidentBits

    copies = []

    def to_device(a, device=None):  # a device copy (on the CPU torch would share the array's memory)
        copies.append(torch.from_numpy(np.array(a)))
        return copies[-1]

    monkeypatch.setattr(torch, "as_tensor", to_device)
    held, where = ResidentBits(), torch.device("cuda", 0)  # the fake copies stay on the CPU: matched as asked for
    frozen = np.arange(12, dtype=np.uint8).reshape(3, 4)
    frozen.flags.writeable = False
    first = held.get(frozen, where)
    assert held.get(frozen, where) is first and held.nbytes == 12 and len(copies) == 1
    if torch.cuda.is_available():  # "cuda" is the current CUDA device: the same copy
        assert held.get(frozen, torch.device("cuda")) is first
    twin = frozen.copy()
    twin.flags.writeable = False
    assert held.get(twin, where) is not first and len(copies) == 2  # equal bytes, another array
    open_ = np.zeros((3, 4), np.uint8)
    held.get(open_, where)
    open_[0, 0] = 9
    assert held.get(open_, where)[0, 0] == 9 and held.nbytes == 0 and len(copies) == 4
    again = held.get(twin, where)
    del twin
    gc.collect()
    other = np.full((3, 4), 7, np.uint8)
    other.flags.writeable = False
    assert held.get(other, where) is not again and int(held.get(other, where)[0, 0]) == 7


DEVICE_SELECTION = """
import sys, numpy as np, torch
from vcfstore.memory.meters import StatmMeter
from vcfstore.retrieval import device_search
torch.set_num_threads(1)
n_q, n_ref = 4, 1_000_000
s0, s1 = torch.zeros((n_q, n_ref), dtype=torch.int32), torch.zeros((n_q, n_ref), dtype=torch.int32)
ranges, margin = tuple(np.full(n_q, v) for v in (-1.0, 1.0, -1.0, 1.0)), np.full(n_q, 1e-9)
print(StatmMeter().read().anon, flush=True)
rows, _ = device_search.candidates(s0, s1, ranges, margin, 8, lambda m_k, top: sys.argv[1] == "proved")
print(len(rows))
"""


@pytest.mark.parametrize("proved", ["proved", "bounds"])
def test_device_selection_stays_within_its_working_bytes(proved):
    """Every pair tied (all counts 0): every pair survives, by the count order or by the bounds of
    every reference. The selection's peak, sampled from outside, stays within what the Retriever
    reserves on the device for it (:func:`device_search.working_bytes` less the counts)."""
    from vcfstore.retrieval import device_search
    from vcfstore.testing import run_measured

    run = run_measured([sys.executable, "-c", DEVICE_SELECTION, proved], interval=0.002)
    assert run.returncode == 0, run.stderr
    base, survivors = (int(x) for x in run.stdout.split())
    assert survivors == 4_000_000
    allowed = device_search.working_bytes(4, 1_000_000, 8) - 8 * 4_000_000  # the counts came before
    assert run.peak_anon - base < allowed, (run.peak_anon - base) / 4e6


@pytest.mark.parametrize("proved", [True, False])
def test_device_candidates_select_as_the_host_does(monkeypatch, proved):
    """The torch engine selects its candidates where its counts are (both the count-order proof and,
    when that fails, the bounds of every reference): the same neighbours and distances as the host."""
    from vcfstore.retrieval import exact_search as es

    if not proved:  # the fallback: every reference's bounds, on both sides
        monkeypatch.setattr(es, "count_order_proved", lambda *a, **kw: False)
    for positionwise in (True, False):
        want = _search("cpu", 3_000, 300, seed=5, positionwise_terms=positionwise, packed=True)
        got = _search("cpu", 3_000, 300, seed=5, positionwise_terms=positionwise, packed=True, engine="torch")
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
