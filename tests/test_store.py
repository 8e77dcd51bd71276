"""The panel store: round trips, windows, tokens, AF, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vcfstore as vs
from vcfstore.store.windows import fixed_windows


def test_round_trip_every_window(sim_store, sim_arrays):
    alleles, positions = sim_arrays
    store = sim_store
    assert store.n_haplotypes == alleles.shape[0]
    assert store.n_sites == alleles.shape[1]
    np.testing.assert_array_equal(store.positions, positions)
    assert list(store.samples) == [f"sample{i}" for i in range(alleles.shape[0] // 2)]
    covered = np.zeros(store.n_sites, bool)
    for w in range(store.n_windows):
        sites = store.window_sites(w)
        covered[sites.start : sites.stop] = True
        np.testing.assert_array_equal(store.window_alleles(w), alleles[:, sites.start : sites.stop])
    assert covered.all()
    np.testing.assert_allclose(store.af, alleles.mean(axis=0), rtol=1e-6)


def test_gather_rows_any_order_with_repeats(sim_store, sim_arrays):
    alleles, _ = sim_arrays
    rows = np.array([17, 3, 17, 199, 0])
    sites = sim_store.window_sites(2)
    np.testing.assert_array_equal(sim_store.window_alleles(2, rows), alleles[rows][:, sites.start : sites.stop])
    assert sim_store.window_alleles(2, np.array([], dtype=int)).shape == (0, len(sites))


def test_tokens_and_af_layout(sim_store, sim_arrays):
    alleles, _ = sim_arrays
    w = 1
    sites = sim_store.window_sites(w)
    n = len(sites)
    tok = sim_store.window_tokens(w)
    assert tok.dtype == np.int64 and tok.shape == (alleles.shape[0], 1030)
    assert (tok[:, 0] == 2).all() and (tok[:, n + 1] == 3).all() and (tok[:, n + 2 :] == 0).all()
    np.testing.assert_array_equal(tok[:, 1 : n + 1], alleles[:, sites.start : sites.stop] + 5)
    af = sim_store.window_af(w)
    assert af.dtype == np.float32 and af.shape == (1030,)
    assert af[0] == 0 and (af[n + 1 :] == 0).all()
    np.testing.assert_allclose(af[1 : n + 1], alleles[:, sites.start : sites.stop].mean(axis=0), rtol=1e-6)


def test_unknown_window_and_bad_rows(sim_store):
    with pytest.raises(vs.StoreError, match=r"window 999 does not exist.*has \d+ windows"):
        sim_store.window_alleles(999)
    with pytest.raises(vs.StoreError, match="does not exist"):
        sim_store.window_tokens(-1)
    with pytest.raises(vs.StoreError, match=r"rows must lie in \[0, 200\)"):
        sim_store.window_alleles(0, np.array([200]))
    with pytest.raises(vs.StoreError, match="mask has shape"):
        sim_store.window_tokens(0, mask=np.zeros(10, bool))
    bad = np.zeros(1030, bool)
    bad[0] = True
    with pytest.raises(vs.StoreError, match="SOS, EOS or padding"):
        sim_store.window_tokens(0, mask=bad)


def test_fixed_windows_overlap_and_contigs():
    runs = [("1", 0, 10), ("2", 10, 13)]
    np.testing.assert_array_equal(fixed_windows(runs, 4, 1), [[0, 4], [3, 7], [6, 10], [10, 13]])
    np.testing.assert_array_equal(fixed_windows(runs, 5, 0), [[0, 5], [5, 10], [10, 13]])


def test_multi_contig_store_never_spans_contigs(tmp_path):
    rng = np.random.default_rng(0)
    alleles = rng.integers(0, 2, (6, 30), dtype=np.uint8)
    pos = np.r_[np.arange(1, 21), np.arange(1, 11)] * 100
    contigs = ["chr1"] * 20 + ["chr2"] * 10
    store = vs.build_from_arrays(alleles, pos, tmp_path / "s", contigs=contigs, window_size=8, max_seq_len=10)
    np.testing.assert_array_equal(store.windows, [[0, 8], [8, 16], [16, 20], [20, 28], [28, 30]])
    assert store.contigs == [("chr1", 0, 20), ("chr2", 20, 30)]
    assert list(store.site_table(18, 22)["contig"]) == ["chr1", "chr1", "chr2", "chr2"]
    with pytest.raises(vs.InputError, match="spans contigs chr1 and chr2"):
        vs.build_from_arrays(
            alleles, pos, tmp_path / "t", contigs=contigs, windows=np.array([[0, 8], [15, 23]]), max_seq_len=10
        )


def test_windows_from_csv_and_too_long(tmp_path, sim_arrays):
    alleles, positions = sim_arrays
    csv = tmp_path / "segments.csv"
    csv.write_text("idx,start,end\n0,0,100\n1,100,350\n2,350,400\n")
    store = vs.build_from_arrays(alleles, positions, tmp_path / "s", windows=vs.read_windows_csv(csv))
    np.testing.assert_array_equal(store.windows, [[0, 100], [100, 350], [350, 400]])
    with pytest.raises(vs.InputError, match="window 1 has 250 sites; at most max_seq_len - 2 = 198"):
        vs.build_from_arrays(alleles, positions, tmp_path / "t", windows=vs.read_windows_csv(csv), max_seq_len=200)
    with pytest.raises(vs.InputError, match="window size 1029 does not fit max_seq_len=1030"):
        vs.build_from_arrays(alleles, positions, tmp_path / "u", window_size=1029)
    csv.write_text("0,10\n10,999999\n")
    with pytest.raises(vs.InputError, match="ends at site 999999 but the panel has"):
        vs.build_from_arrays(alleles, positions, tmp_path / "v", windows=vs.read_windows_csv(csv), max_seq_len=10**6)


def test_array_input_errors(tmp_path):
    ok = np.zeros((4, 3), np.uint8)
    for alleles, positions, match in [
        (np.zeros((3, 3), np.uint8), [1, 2, 3], "even"),
        (np.full((4, 3), 2, np.uint8), [1, 2, 3], "only 0"),
        (np.zeros(3), [1, 2, 3], "2-D"),
        (ok, [1, 2], "positions has shape"),
        (ok, [3, 2, 1], "not sorted"),
        (ok, [1, 1, 2], "duplicate site"),
    ]:
        with pytest.raises(vs.InputError, match=match):
            vs.build_from_arrays(alleles, np.asarray(positions), tmp_path / "x")
        assert not (tmp_path / "x").exists()  # an input error leaves nothing behind


def test_open_errors(tmp_path, sim_store):
    with pytest.raises(vs.StoreError, match="no such store"):
        vs.open_store(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(vs.StoreError, match="not a vcfstore panel store"):
        vs.open_store(tmp_path / "plain")
    (tmp_path / "plain" / "zarr.json").write_text("{not json")
    with pytest.raises(vs.StoreError, match="metadata cannot be read"):
        vs.open_store(tmp_path / "plain")


def test_existing_outputs_are_protected(tmp_path, sim_arrays):
    alleles, positions = sim_arrays
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(vs.StoreError, match="not a vcfstore store; refusing"):
        vs.build_from_arrays(alleles, positions, foreign)
    with pytest.raises(vs.StoreError, match="not a vcfstore store; refusing"):
        vs.build_from_arrays(alleles, positions, foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "precious"
    out = tmp_path / "s"
    vs.build_from_arrays(alleles[:, :100], positions[:100], out)
    with pytest.raises(vs.StoreError, match="holds a finished store"):
        vs.build_from_arrays(alleles, positions, out)
    assert vs.open_store(out).n_sites == 100
    assert vs.build_from_arrays(alleles, positions, out, force=True).n_sites == alleles.shape[1]


def test_supplied_af_and_info(tmp_path, sim_store, sim_arrays):
    alleles, positions = sim_arrays
    af = np.linspace(0, 1, alleles.shape[1]).astype(np.float32)
    store = vs.build_from_arrays(alleles, positions, tmp_path / "s", af=af)
    np.testing.assert_array_equal(store.af, af)
    with pytest.raises(vs.InputError, match="supplied allele frequencies have 3 entries"):
        vs.build_from_arrays(alleles, positions, tmp_path / "t", af=af[:3])
    info = sim_store.info()
    assert info["n_haplotypes"] == 200 and info["bits_per_genotype"] < 1
    assert info["ratio_vs_int64_tokens"] == pytest.approx(64 / info["bits_per_genotype"])


def test_store_pickles_as_path(sim_store):
    import pickle

    clone = pickle.loads(pickle.dumps(sim_store))
    assert set(sim_store.__getstate__()) == {"path", "meta"}  # no open Zarr handle travels
    np.testing.assert_array_equal(clone.window_alleles(0), sim_store.window_alleles(0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_samples=st.integers(1, 6),
    n_sites=st.integers(1, 70),
    window=st.integers(1, 20),
    overlap_frac=st.floats(0, 0.9),
    seed=st.integers(0, 2**32 - 1),
    rate=st.floats(0, 1),
)
def test_tokens_property(tmp_path_factory, n_samples, n_sites, window, overlap_frac, seed, rate):
    rng = np.random.default_rng(seed)
    alleles = rng.integers(0, 2, (2 * n_samples, n_sites), dtype=np.uint8)
    overlap = int(overlap_frac * window)
    max_seq_len = window + 2 + int(rng.integers(0, 3))
    store = vs.build_from_arrays(
        alleles,
        np.arange(1, n_sites + 1),
        tmp_path_factory.mktemp("h") / "s",
        window_size=window,
        overlap=overlap,
        max_seq_len=max_seq_len,
        chunk_sites=8,
    )
    masks = vs.MaskSchedule(seed).at(store, epoch=1, rate=rate)
    seen = set()
    for w in range(store.n_windows):
        sites = store.window_sites(w)
        seen.update(sites)
        n = len(sites)
        assert 1 <= n <= window and n <= max_seq_len - 2
        mask = masks[w]
        assert mask.shape == (max_seq_len,) and not mask[0] and not mask[n + 1 :].any()
        tok = store.window_tokens(w, mask=mask)
        expect = np.where(mask[1 : n + 1], 4, alleles[:, sites.start : sites.stop] + 5)
        np.testing.assert_array_equal(tok[:, 1 : n + 1], expect)
        assert (tok[:, 0] == 2).all() and (tok[:, n + 1] == 3).all() and (tok[:, n + 2 :] == 0).all()
    assert seen == set(range(n_sites))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 70), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_pack_sites_equals_packbits_along_sites(n_sites, n_hap, seed):
    """The builder's packing (eight rows shifted and combined) is ``np.packbits(axis=0).T``, partial bytes too."""
    from vcfstore.store.packed import pack_sites

    alleles = (np.random.default_rng(seed).random((n_sites, n_hap)) < 0.3).astype(np.uint8)
    got = pack_sites(alleles)
    np.testing.assert_array_equal(got, np.packbits(alleles, axis=0).T)
    assert got.flags.c_contiguous and got.dtype == np.uint8


def test_zarr_settings_of_overlapping_builds_are_restored_by_the_last():
    """Builds in threads of one process share Zarr's process-wide configuration: a setting stays while
    any of them holds it and the last one out restores it, whatever the order they finish in."""
    import zarr

    from vcfstore.store.builder import _SERIAL_COMPRESSION

    before = zarr.config.get("async.concurrency")
    first, second = _SERIAL_COMPRESSION.held(), _SERIAL_COMPRESSION.held()
    first.__enter__()
    second.__enter__()
    assert zarr.config.get("async.concurrency") == 1
    first.__exit__(None, None, None)  # the first build finishes while the second still reads
    assert zarr.config.get("async.concurrency") == 1
    second.__exit__(None, None, None)
    assert zarr.config.get("async.concurrency") == before != 1
