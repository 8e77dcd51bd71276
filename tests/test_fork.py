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
