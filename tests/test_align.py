"""Cohorts against a reference: targets with swapped alleles, renamed contigs, subsets and supersets."""

from __future__ import annotations

import numpy as np
import pytest

import vcfstore as vs
from tests.helpers import write_vcf
from vcfstore.store.align import AlignedTarget

N_TARGET_SAMPLES = 5
BASES = "ACGT"


@pytest.fixture(scope="module")
def reference(sim_arrays, tmp_path_factory) -> vs.PanelStore:
    return build_reference(sim_arrays, tmp_path_factory.mktemp("align") / "ref")


def build_reference(sim_arrays, out) -> vs.PanelStore:
    """The simulated panel with random REF/ALT bases, windows of 300 sites."""
    alleles, positions = sim_arrays
    rng = np.random.default_rng(11)
    refs = rng.integers(0, 4, len(positions))
    alts = (refs + rng.integers(1, 4, len(positions))) % 4
    return vs.build_from_arrays(
        alleles,
        positions,
        out,
        contigs="20",
        refs=[BASES[i] for i in refs],
        alts=[BASES[i] for i in alts],
        window_size=300,
    )


def _target_records(reference, *, seed, keep=0.6, flip=0.2, mismatch=0.05, extra=40, missing=0.02, contig="chr20"):
    """A target VCF's records and the truth an aligner must recover, written without vcfstore.

    Returns the records plus, per reference site, the expected alleles [n_hap, n_ref] in
    reference coding, the expected missing mask, and the expected counts.
    """
    rng = np.random.default_rng(seed)
    t = reference.site_table()
    n_ref, n_hap = reference.n_sites, 2 * N_TARGET_SAMPLES
    truth = rng.integers(0, 2, (n_hap, n_ref), dtype=np.uint8)
    gt_missing = rng.random((n_hap, n_ref)) < missing
    kept = rng.random(n_ref) < keep
    flipped = kept & (rng.random(n_ref) < flip)
    records = []  # (position, order key, record)
    for i in range(n_ref):
        pos, ref, alt = int(t["position"][i]), str(t["ref"][i]), str(t["alt"][i])
        if kept[i]:
            a, b = (alt, ref) if flipped[i] else (ref, alt)
            coded = 1 - truth[:, i] if flipped[i] else truth[:, i]
            calls = ["." if gt_missing[h, i] else str(coded[h]) for h in range(n_hap)]
            gts = [f"{calls[2 * s]}|{calls[2 * s + 1]}" for s in range(N_TARGET_SAMPLES)]
            records.append((pos, 0, (contig, pos, f"r{i}", a, b, gts)))
    n_mismatch = 0
    for i in np.flatnonzero(rng.random(n_ref) < mismatch):
        pos, ref, alt = int(t["position"][i]), str(t["ref"][i]), str(t["alt"][i])
        other = next(x for x in BASES if x not in (ref, alt))
        records.append((pos, 1, (contig, pos, f"m{i}", ref, other, ["0|1"] * N_TARGET_SAMPLES)))
        n_mismatch += 1
    taken = set(int(p) for p in t["position"])
    extra_pos = [p for p in rng.integers(1, int(t["position"].max()), 4 * extra).tolist() if p not in taken]
    extra_pos = sorted(set(extra_pos))[:extra]
    for p in extra_pos:
        records.append((p, 2, (contig, p, f"x{p}", "A", "G", ["1|0"] * N_TARGET_SAMPLES)))
    records.sort(key=lambda r: (r[0], r[1]))
    expected_missing = ~kept[None, :] | gt_missing
    expected = np.where(expected_missing, 0, truth).astype(np.uint8)
    counts = {
        "matched": int((kept & ~flipped).sum()),
        "flipped": int(flipped.sum()),
        "missing": int((~kept).sum()),
        "dropped": len(extra_pos),
        "allele_mismatch": n_mismatch,
        "duplicate": 0,
    }
    return [r for _, _, r in records], expected, expected_missing, counts


def _check_windows(aligned: AlignedTarget, reference, expected, expected_missing) -> None:
    for w in range(reference.n_windows):
        sites = reference.window_sites(w)
        alleles, missing = aligned.window(w)
        np.testing.assert_array_equal(missing, expected_missing[:, sites.start : sites.stop])
        np.testing.assert_array_equal(alleles, expected[:, sites.start : sites.stop])


def test_vcf_target_with_swaps_renamed_contig_subset_superset_and_missing(tmp_path, reference):
    records, expected, expected_missing, counts = _target_records(reference, seed=1)
    path = write_vcf(tmp_path / "target.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    aligned = AlignedTarget(reference, path)
    r = aligned.report
    assert {k: getattr(r, k) for k in counts} == counts
    assert r.n_target_sites == len(records) and r.contigs == {"chr20": "20"} and r.unknown_contigs == []
    assert aligned.n_haplotypes == 2 * N_TARGET_SAMPLES and list(aligned.samples) == [f"t{i}" for i in range(5)]
    np.testing.assert_array_equal(aligned.site_missing, expected_missing.all(axis=0))
    _check_windows(aligned, reference, expected, expected_missing)
    rows = np.asarray([3, 0, 3])
    a, m = aligned.window(2, rows)
    sites = reference.window_sites(2)
    np.testing.assert_array_equal(a, expected[rows, sites.start : sites.stop])
    np.testing.assert_array_equal(m, expected_missing[rows, sites.start : sites.stop])
    # AF in reference coding over the observed alleles, by brute force.
    observed = ~expected_missing
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.where(observed.any(axis=0), (expected * observed).sum(axis=0) / observed.sum(axis=0), np.nan)
    np.testing.assert_allclose(aligned.af, want, rtol=1e-6)
    assert "flipped" in str(r) and r.to_dict()["aligned"] == counts["matched"] + counts["flipped"]


def test_store_target_is_read_lazily_and_recoded(tmp_path, reference):
    records, expected, _, counts = _target_records(reference, seed=2, missing=0.0, contig="20")
    path = write_vcf(tmp_path / "target.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    target = vs.build_store(vs.VcfSource(path), tmp_path / "target_store", progress=False)
    aligned = AlignedTarget(reference, target.path)
    assert aligned.report.flipped == counts["flipped"] and aligned.report.matched == counts["matched"]
    _check_windows(aligned, reference, expected, np.broadcast_to(aligned.site_missing, expected.shape))
    # The stored AF of a flipped site is read as 1 - AF.
    tab = target.site_table()
    store_af = dict(zip(tab["position"].tolist(), target.af.tolist(), strict=False))
    i = int(np.flatnonzero(aligned.flipped)[0])
    assert aligned.af[i] == pytest.approx(1 - store_af[int(reference.positions[i])])
    assert aligned.target_index[i] >= 0 and target.positions[aligned.target_index[i]] == reference.positions[i]


def test_superset_target_misses_nothing(tmp_path, reference):
    records, expected, expected_missing, counts = _target_records(
        reference, seed=3, keep=1.0, flip=0.0, mismatch=0.0, missing=0.0, extra=100, contig="20"
    )
    path = write_vcf(tmp_path / "target.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    aligned = AlignedTarget(reference, vs.VcfSource(path))
    assert aligned.report.missing == 0 and aligned.report.dropped == counts["dropped"] > 0
    assert not expected_missing.any()
    _check_windows(aligned, reference, expected, expected_missing)


def test_contig_aliases_and_unknown_contigs(tmp_path, reference):
    records, expected, expected_missing, _ = _target_records(reference, seed=4, contig="twenty", extra=0)
    records.append(("chrX", 5, ".", "A", "G", ["0|1"] * N_TARGET_SAMPLES))
    path = write_vcf(tmp_path / "target.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    with pytest.raises(vs.InputError, match=r"only 0 of .*target contigs not in the reference: chrX, twenty"):
        AlignedTarget(reference, path)
    aligned = AlignedTarget(reference, path, contig_aliases={"twenty": "20"})
    assert aligned.report.unknown_contigs == ["chrX"] and aligned.report.dropped == 1
    _check_windows(aligned, reference, expected, expected_missing)
    with pytest.raises(vs.ArgumentError, match="the reference has no contig 21"):
        AlignedTarget(reference, path, contig_aliases={"twenty": "21"})


def test_another_build_is_refused(tmp_path, reference):
    t = reference.site_table()
    records = [
        ("20", int(p) + 7, ".", str(a), str(b), ["0|1"] * N_TARGET_SAMPLES)
        for p, a, b in zip(t["position"], t["ref"], t["alt"], strict=True)
    ]
    records = [r for r in records if r[1] not in set(t["position"].tolist())]
    path = write_vcf(tmp_path / "shifted.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    with pytest.raises(vs.InputError, match=r"below min_matched_fraction=0.5: another genome build"):
        AlignedTarget(reference, path)
    assert AlignedTarget(reference, path, min_matched_fraction=0.0).report.missing == reference.n_sites


def test_duplicate_target_sites_keep_the_first(tmp_path, reference):
    t = reference.site_table()
    p, a, b = int(t["position"][0]), str(t["ref"][0]), str(t["alt"][0])
    records = [("20", p, ".", a, b, ["1|1"] * N_TARGET_SAMPLES), ("20", p, ".", b, a, ["1|1"] * N_TARGET_SAMPLES)]
    path = write_vcf(tmp_path / "dup.vcf", records, [f"t{i}" for i in range(N_TARGET_SAMPLES)])
    aligned = AlignedTarget(reference, path)
    assert (aligned.report.matched, aligned.report.flipped, aligned.report.duplicate) == (1, 0, 1)
    assert (aligned.window_alleles(0)[:, 0] == 1).all() and not aligned.window_missing(0)[:, 0].any()


def test_missing_mask_policy_is_for_targets_only(tmp_path):
    path = write_vcf(tmp_path / "m.vcf", [("1", 10, ".", "A", "G", [".|1", "0|1"])])
    policy = vs.InputPolicy(missing="mask")
    with pytest.raises(vs.ArgumentError, match="missing='mask' is for imputation targets"):
        vs.build_store(vs.VcfSource(path, policy=policy), tmp_path / "s", progress=False)
    block = next(vs.VcfSource(path, policy=policy).blocks())
    np.testing.assert_array_equal(block.missing, [[True, False, False, False]])
    np.testing.assert_array_equal(block.alleles, [[0, 1, 0, 1]])
