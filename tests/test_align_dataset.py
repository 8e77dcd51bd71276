"""TargetDataset on a cohort aligned to the reference: training and imputation items, retrieval on them.

Kept apart from ``test_align.py``, which also runs on the newest zarr without torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vcfstore as vs
from tests.helpers import write_vcf
from tests.test_align import N_TARGET_SAMPLES, _target_records, build_reference
from vcfstore.retrieval.layers import VcfBertEmbedding
from vcfstore.store.align import AlignedTarget


@pytest.fixture(scope="module")
def reference(sim_arrays, tmp_path_factory) -> vs.PanelStore:
    return build_reference(sim_arrays, tmp_path_factory.mktemp("align") / "ref")


@pytest.mark.parametrize("mode", ["train", "impute"])
def test_dataset_on_an_aligned_target(tmp_path, reference, mode):
    """Items of an aligned target, against the truth in reference coding: masks, tokens and labels."""
    records, expected, expected_missing, _ = _target_records(reference, seed=5, missing=0.05)
    path = write_vcf(tmp_path / "target.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    aligned = AlignedTarget(reference, path)
    schedule = vs.MaskSchedule(4)
    ds = vs.TargetDataset(aligned, schedule if mode == "train" else None, mode=mode, epoch=1, rate=0.4)
    assert ds.reference is reference and len(ds) == N_TARGET_SAMPLES * reference.n_windows
    L, v = reference.max_seq_len, reference.vocab
    site_missing = expected_missing.all(axis=0)
    for index in range(0, len(ds), 3):
        w, s = divmod(index, N_TARGET_SAMPLES)
        item = ds[index]
        sites = reference.window_sites(w)
        n = len(sites)
        want_mask = np.zeros(L, dtype=bool)
        if mode == "train":
            want_mask = schedule.window_mask(reference, w, 1, 0.4).copy()
        want_mask[1 : n + 1] |= site_missing[sites.start : sites.stop]
        np.testing.assert_array_equal(item["mask"].numpy(), want_mask)
        np.testing.assert_array_equal(ds.window_mask(w), want_mask)
        for h, key in enumerate(("1", "2")):
            truth = expected[2 * s + h, sites.start : sites.stop].astype(np.int64) + v.allele0
            gap = expected_missing[2 * s + h, sites.start : sites.stop]
            hidden = want_mask[1 : n + 1] | gap
            tokens, labels = item[f"hap_{key}"].numpy(), item[f"label_{key}"].numpy()
            assert tokens[0] == v.sos and tokens[n + 1] == v.eos and (tokens[n + 2 :] == v.pad).all()
            np.testing.assert_array_equal(tokens[1 : n + 1], np.where(hidden, v.mask, truth))
            np.testing.assert_array_equal(labels[1 : n + 1], np.where(hidden & ~gap, truth, -100))
            if mode == "impute":  # only the unknown is masked, so nothing masked has a label
                assert (labels == -100).all() and np.array_equal(tokens[1 : n + 1] == v.mask, gap)
        np.testing.assert_array_equal(item["af"].numpy()[1 : n + 1], reference.af[sites.start : sites.stop])
    # The sampler takes the reference's windows; the exact backend retrieves for per-haplotype masks,
    # checked against float64 brute force over embeddings masked where each query is masked.
    sampler = vs.WindowGroupedBatchSampler.for_dataset(ds, batch_size=4)
    batch = vs.collate([ds[k] for k in next(iter(sampler))])
    layer = VcfBertEmbedding(16).eval()
    out = vs.Retriever(reference, layer, k=2, backend="exact", forward_kwargs={"pos": True}).augment(batch)
    w = int(batch["window_idx"][0])
    refs = reference.window_tokens(w)
    af = torch.as_tensor(np.tile(batch["af"][0].numpy(), (len(refs), 1)))
    for key in ("1", "2"):
        for q, found in zip(batch[f"hap_{key}"], out[f"rag_idx_h{key}"], strict=True):
            hidden = q.numpy() == v.mask
            masked_refs = np.where(hidden, v.mask, refs)
            with torch.no_grad():
                e_q = layer(q[None], af=af[:1], pos=True).double().reshape(-1)
                e_r = layer(torch.as_tensor(masked_refs), af=af, pos=True).double().reshape(len(refs), -1)
            d = ((e_r - e_q) ** 2).sum(1).numpy()
            np.testing.assert_array_equal(found.numpy(), np.argsort(d, kind="stable")[:2])


def test_dataset_refuses_unaligned_or_mismatched_use(tmp_path, reference):
    records, *_ = _target_records(reference, seed=6)
    path = write_vcf(tmp_path / "target.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    aligned = AlignedTarget(reference, path)
    with pytest.raises(vs.ArgumentError, match="MaskSchedule"):
        vs.TargetDataset(aligned)
    with pytest.raises(vs.ArgumentError, match="mode must be"):
        vs.TargetDataset(aligned, vs.MaskSchedule(1), mode="test")
    other = vs.build_from_arrays(
        np.zeros((4, reference.n_sites), np.uint8), reference.positions, tmp_path / "other", contigs="20"
    )
    with pytest.raises(vs.ArgumentError, match="brings its reference"):
        vs.TargetDataset(aligned, vs.MaskSchedule(1), reference=other)
    with pytest.raises(vs.VcfstoreError, match=r"different sites.*AlignedTarget"):  # same positions, other alleles
        vs.TargetDataset(other, vs.MaskSchedule(1), reference=reference)
