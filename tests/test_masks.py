"""The mask schedule: a pure function of (seed, epoch, window, rate), equal in every process."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vcfstore as vs


def _masks_in_child(store_path: str, seed: int) -> list[bytes]:
    store = vs.open_store(store_path)
    masks = vs.MaskSchedule(seed).at(store, epoch=3, rate=0.5)
    return [np.packbits(m).tobytes() for m in masks]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_same_masks_in_every_process(sim_store, method):
    expect = _masks_in_child(str(sim_store.path), 11)
    np.random.seed(0)  # a different global RNG state in the parent must not matter
    with mp.get_context(method).Pool(2) as pool:
        got = pool.starmap(_masks_in_child, [(str(sim_store.path), 11)] * 2)
    assert got == [expect, expect]


def test_global_rng_untouched(sim_store):
    import torch

    np.random.seed(5)
    torch.manual_seed(5)
    before_np, before_torch = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    vs.MaskSchedule(1).window_mask(sim_store, 0, 0, 0.3)
    assert (np.random.get_state()[1] == before_np).all() and torch.equal(torch.get_rng_state(), before_torch)


def test_rates_versions_and_af_rule():
    s = vs.MaskSchedule(seed=1)
    af = np.r_[np.full(5000, 0.01), np.full(5000, 0.3)]
    m = s.site_mask(af, window=2, epoch=0, rate=0.3)
    assert abs(m[:5000].mean() - 0.7) < 0.03 and abs(m[5000:].mean() - 0.3) < 0.03
    hi = s.site_mask(af, window=2, epoch=0, rate=0.8)
    assert (hi >= m).all() and abs(hi[5000:].mean() - 0.8) < 0.03  # nested as the rate grows
    assert not (s.site_mask(af, 3, 0, 0.3) == m).all() and not (s.site_mask(af, 2, 1, 0.3) == m).all()
    assert (vs.MaskSchedule(seed=1).site_mask(af, 2, 0, 0.3) == m).all()
    versions = {
        s.mask_version(0, 0.3),
        s.mask_version(1, 0.3),
        s.mask_version(0, 0.31),
        vs.MaskSchedule(2).mask_version(0, 0.3),
    }
    assert len(versions) == 4 and s.mask_version(0, 0.3) == vs.MaskSchedule(1).mask_version(0, 0.3)
    with pytest.raises(vs.ArgumentError, match="rate must be in"):
        s.site_mask(af, 0, 0, 1.5)
    with pytest.raises(vs.ArgumentError, match="epoch must be a non-negative integer"):
        s.site_mask(af, 0, -1, 0.5)


def test_masks_version_of_explicit_masks(sim_store):
    masks = vs.MaskSchedule(4).at(sim_store, 0, 0.4)
    explicit = list(masks)
    assert vs.masks_version(masks) == masks.mask_version
    v = vs.masks_version(explicit)
    assert v.startswith("mask:") and v == vs.masks_version([m.copy() for m in explicit])
    explicit[0] = ~explicit[0] & (sim_store.window_tokens(0, rows=np.arange(1))[0] >= 5)
    assert vs.masks_version(explicit) != v
    assert len(masks[1:3]) == 2


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**63), epoch=st.integers(0, 10**6), window=st.integers(0, 10**5), rate=st.floats(0, 1))
def test_pure_function(seed, epoch, window, rate):
    af = np.linspace(0, 0.5, 64)
    a = vs.MaskSchedule(seed).site_mask(af, window, epoch, rate)
    b = vs.MaskSchedule(seed).site_mask(af.copy(), window, epoch, rate)
    assert a.dtype == bool and (a == b).all()
    if rate == 0:
        assert not a[af >= 0.05].any()
    if rate == 1:
        assert a[af >= 0.05].all()
