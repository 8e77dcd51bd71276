"""Reading a store from fork, spawn and forkserver workers, with the parent already using zarr."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

import vcfstore as vs


def _read(store: vs.PanelStore, w: int) -> int:
    return int(store.window_tokens(w, rows=np.arange(0, store.n_haplotypes, 3)).sum())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_read_what_the_parent_reads(sim_store, method):
    store = vs.open_store(sim_store.path)
    expect = [_read(store, w) for w in range(store.n_windows)]  # the parent's zarr is live now
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        got = pool.starmap(_read, [(store, w) for w in range(store.n_windows)], chunksize=1)
    assert got == expect
    assert _read(store, 0) == expect[0]  # the parent still reads after its children


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
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_count, (q, ref)).get(timeout=60)
    np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(expect, np.bitwise_count(q[:, None] & ref[None]).sum(-1))
