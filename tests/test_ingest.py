"""Ingest from VCF/BCF and VCF Zarr: real data, input policies, bad input."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

import vcfstore as vs
from tests.helpers import vcf_from_arrays, write_vcf


def _independent_read(path):
    """Read a phased VCF with plain text parsing: an independent check of the htslib path."""
    samples, pos, gts = [], [], []
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.startswith("##"):
                continue
            fields = line.rstrip("\n").split("\t")
            if line.startswith("#"):
                samples = fields[9:]
                continue
            if len(fields[3]) != 1 or len(fields[4]) != 1:  # the default policy keeps SNVs only
                continue
            pos.append(int(fields[1]))
            gts.append([int(a) for g in fields[9:] for a in g.split(":")[0].split("|")])
    return samples, np.asarray(pos), np.asarray(gts, dtype=np.uint8).T


def test_real_reference_panel_matches_independent_read(real_data, tmp_path):
    store = vs.build_store(vs.VcfSource(real_data / "reference.vcf.gz"), tmp_path / "ref", progress=False)
    samples, pos, alleles = _independent_read(real_data / "reference.vcf.gz")
    assert list(store.samples) == samples and store.n_haplotypes == 600
    np.testing.assert_array_equal(store.positions, pos)
    np.testing.assert_array_equal(store.read_alleles(0, store.n_sites), alleles)
    for w in (0, store.n_windows - 1):
        sites = store.window_sites(w)
        np.testing.assert_array_equal(store.window_alleles(w), alleles[:, sites.start : sites.stop])
    assert store.meta["counts"]["skipped_non_snv"] == 24990 - len(pos)


def test_real_unphased_file_hits_policy(real_data, tmp_path):
    with pytest.raises(vs.InputError, match=r"record 20:\d+ .*unphased heterozygous"):
        vs.build_store(vs.VcfSource(real_data / "unphased.vcf.gz"), tmp_path / "u", progress=False)
    assert not (tmp_path / "u").exists()
    policy = vs.InputPolicy(unphased="skip-site")
    store = vs.build_store(vs.VcfSource(real_data / "unphased.vcf.gz", policy=policy), tmp_path / "u", progress=False)
    counts = store.meta["counts"]
    assert counts["skipped_unphased"] > 0
    assert store.n_sites == counts["records"] - counts["skipped_non_snv"] - counts["skipped_unphased"]


def test_af_from_info(real_data, tmp_path):
    store = vs.build_store(vs.VcfSource(real_data / "reference.vcf.gz"), tmp_path / "a", af_from="info", progress=False)
    assert store.meta["params"]["af_from"] == "info"
    assert 0 < store.af.min() and store.af.max() <= 1
    policy = vs.InputPolicy(unphased="keep")
    with pytest.raises(vs.InputError, match="has no INFO/AF value; use --af-from panel"):
        vs.build_store(
            vs.VcfSource(real_data / "unphased.vcf.gz", policy=policy), tmp_path / "b", af_from="info", progress=False
        )


def test_region(real_data, tmp_path):
    store = vs.build_store(
        vs.VcfSource(real_data / "reference.vcf.gz", region="20:1500000-1600000"), tmp_path / "r", progress=False
    )
    assert 1_500_000 <= store.positions.min() and store.positions.max() <= 1_600_000 and store.n_sites > 100


def test_vcf_zarr_equals_vcf(tmp_path, sim_arrays):
    from bio2zarr import vcf as b2z

    alleles, positions = sim_arrays
    vcf = vcf_from_arrays(tmp_path / "p.vcf.gz", alleles[:40, :1500], positions[:1500])
    b2z.convert([str(vcf)], str(tmp_path / "p.vcz"))
    a = vs.build_store(vs.VcfSource(vcf), tmp_path / "a", window_size=500, progress=False)
    b = vs.build_store(vs.VcfZarrSource(tmp_path / "p.vcz"), tmp_path / "b", window_size=500, progress=False)
    np.testing.assert_array_equal(a.read_alleles(0, a.n_sites), alleles[:40, :1500])
    np.testing.assert_array_equal(b.read_alleles(0, b.n_sites), alleles[:40, :1500])
    np.testing.assert_array_equal(a.positions, b.positions)
    assert list(a.samples) == list(b.samples)
    with pytest.raises(vs.InputError, match="not a VCF Zarr store"):
        vs.VcfZarrSource(tmp_path / "a" / "sites")


GT2 = ["0|1", "1|0"]


def _build(tmp_path, records, name="in.vcf", samples=("S1", "S2"), **policy):
    path = write_vcf(tmp_path / name, records, samples)
    return vs.build_store(
        vs.VcfSource(path, policy=vs.InputPolicy(**policy)), tmp_path / "out", progress=False, force=True
    )


def test_multiallelic_and_non_snv_policies(tmp_path):
    recs = [
        ("1", 10, "a", "A", "G", GT2),
        ("1", 20, "b", "A", "C,T", ["0|2", "1|0"]),
        ("1", 30, "c", "AT", "A", GT2),
        ("1", 40, "d", "C", "<DEL>", GT2),
        ("1", 50, "e", "C", ".", GT2),
    ]
    s = _build(tmp_path, recs, multiallelic="skip")
    assert list(s.positions) == [10]
    c = s.meta["counts"]
    assert (c["skipped_multiallelic"], c["skipped_non_snv"], c["skipped_no_alt"]) == (1, 2, 1)
    s = _build(tmp_path, recs)  # split is the default
    assert list(s.positions) == [10, 20, 20] and s.meta["counts"]["split_multiallelic"] == 1
    np.testing.assert_array_equal(s.read_alleles(1, 3).T, [[0, 0, 1, 0], [0, 1, 0, 0]])  # ALT C, then ALT T
    assert list(s.site_table()["alt"]) == ["G", "C", "T"]
    s = _build(tmp_path, recs, multiallelic="skip", non_snv="keep")
    assert list(s.positions) == [10, 30, 40]


def test_missing_policies(tmp_path):
    recs = [("1", 10, ".", "A", "G", [".|1", "1|0"]), ("1", 20, ".", "A", "G", GT2)]
    with pytest.raises(vs.InputError, match="record 1:10 has missing genotypes"):
        _build(tmp_path, recs)
    assert list(_build(tmp_path, recs, missing="skip-site").positions) == [20]
    s = _build(tmp_path, recs, missing="ref")
    np.testing.assert_array_equal(s.read_alleles(0, 1)[:, 0], [0, 1, 1, 0])


def test_unphased_policies(tmp_path):
    recs = [("1", 10, "rs1", "A", "G", ["0/1", "1|0"]), ("1", 20, ".", "A", "G", ["1/1", "0|1"])]
    with pytest.raises(vs.InputError, match=r"record 1:10 \(rs1\) has unphased heterozygous"):
        _build(tmp_path, recs)
    s = _build(tmp_path, recs, unphased="skip-site")
    assert list(s.positions) == [20]  # an unphased homozygous call is unambiguous
    assert s.meta["counts"]["unphased_homozygous_calls"] == 1
    assert list(_build(tmp_path, recs, unphased="keep").positions) == [10, 20]


@pytest.mark.parametrize(
    ("records", "match"),
    [
        ([("1", 10, ".", "A", "G", ["0|1", "1"])], "not diploid"),
        ([("1", 10, ".", "A", "G", ["0|1|1", "1|0|0"])], "not diploid"),
        ([("1", 20, ".", "A", "G", GT2), ("1", 10, ".", "A", "G", GT2)], "1:10 comes after position 20"),
        ([("1", 10, ".", "A", "G", GT2), ("1", 10, ".", "a", "g", GT2)], r"1:10 repeats the site A>G .*duplicate site"),
        (
            [("1", 10, ".", "A", "G", GT2), ("2", 10, ".", "A", "G", GT2), ("1", 30, ".", "A", "G", GT2)],
            "contig 1 appears again",
        ),
        ([], "has no variant records"),
        # a call naming an allele the record does not list: refused, never read as REF
        ([("1", 10, ".", "A", "G", GT2), ("1", 20, "rs2", "A", "G", ["2|0", "1|0"])], r"1:20 \(rs2\) .*allele 2 but"),
        ([("1", 10, ".", "A", "G,T", ["0|3", "1|2"])], "allele 3 but lists 2 ALT"),
    ],
)
def test_bad_records(tmp_path, records, match):
    with pytest.raises(vs.InputError, match=match):
        _build(tmp_path, records)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("alt", "calls", "policy"),
    [
        ("C,.,T", ["0|2", "1|0"], "split"),
        ("C,.,T", ["0|2", "1|0"], "collapse"),
        (".,C", ["0|1", "2|0"], "collapse"),
        (".,C", ["0|1", "0|0"], "skip"),
    ],
)
def test_a_call_naming_a_dot_alt_is_refused(tmp_path, alt, calls, policy):
    """A call naming an ALT listed as "." has no allele: refused, whatever the policy (it was read as REF or ALT)."""
    with pytest.raises(vs.InputError, match=r"1:10 has a call with allele \d, whose ALT is listed as '\.'"):
        _build(tmp_path, [("1", 10, ".", "A", alt, calls), ("1", 20, ".", "A", "G", GT2)], multiallelic=policy)


def test_a_dot_among_alts_keeps_the_alt_numbers(tmp_path):
    """ALT ``C,.,T``: the calls number T as allele 3, so its site holds allele 3's carriers (once allele 2's)."""
    recs = [("1", 10, ".", "A", "C,.,T", ["0|3", "1|0"]), ("1", 20, ".", "A", "G", GT2)]
    s = _build(tmp_path, recs)
    assert list(s.site_table()["alt"]) == ["C", "T", "G"]
    np.testing.assert_array_equal(s.read_alleles(0, 2).T, [[0, 0, 1, 0], [0, 1, 0, 0]])


def test_duplicate_skip_and_indel_sharing_position(tmp_path):
    recs = [
        ("1", 10, ".", "A", "G", GT2),
        ("1", 10, ".", "A", "C", GT2),
        ("1", 10, ".", "A", "G", ["1|1", "1|1"]),
        ("1", 20, ".", "AT", "A", GT2),
        ("1", 20, ".", "A", "T", GT2),
    ]
    s = _build(tmp_path, recs, duplicates="skip")
    assert list(s.positions) == [10, 10, 20] and s.meta["counts"]["skipped_duplicate"] == 1
    assert list(s.site_table()["alt"]) == ["G", "C", "T"]
    np.testing.assert_array_equal(s.read_alleles(0, 1)[:, 0], [0, 1, 1, 0])  # the first A>G record is kept


def test_bad_files(tmp_path, real_data):
    trunc = tmp_path / "trunc.vcf.gz"
    trunc.write_bytes((real_data / "reference.vcf.gz").read_bytes()[:600_000])
    with pytest.raises(vs.InputError, match="truncated or corrupt"):
        vs.build_store(vs.VcfSource(trunc), tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()
    junk = tmp_path / "junk.vcf"
    junk.write_text("this is not a VCF\n")
    with pytest.raises(vs.InputError, match="not a readable VCF/BCF file"):
        vs.VcfSource(junk)
    with pytest.raises(vs.InputError, match="no such file"):
        vs.VcfSource(tmp_path / "missing.vcf.gz")
    nosamples = write_vcf(tmp_path / "ns.vcf", [], samples=())
    with pytest.raises(vs.InputError, match="has no samples"):
        vs.VcfSource(nosamples)


def test_bcf_input(tmp_path, real_data):
    from cyvcf2 import VCF, Writer

    src = VCF(str(real_data / "reference.vcf.gz"))
    w = Writer(str(tmp_path / "ref.bcf"), src, mode="wb")
    for i, rec in enumerate(src):
        if i == 3000:
            break
        w.write_record(rec)
    w.close()
    src.close()
    s = vs.build_store(vs.VcfSource(tmp_path / "ref.bcf"), tmp_path / "b", progress=False)
    ref = vs.build_store(
        vs.VcfSource(real_data / "reference.vcf.gz", region="20:1-" + str(s.positions[-1])),
        tmp_path / "r",
        progress=False,
    )
    np.testing.assert_array_equal(s.read_alleles(0, s.n_sites), ref.read_alleles(0, ref.n_sites))


def test_copy_of_real_file_has_same_identity(tmp_path, real_data):
    shutil.copy(real_data / "reference.vcf.gz", tmp_path / "copy.vcf.gz")
    a = vs.VcfSource(real_data / "reference.vcf.gz").describe()
    b = vs.VcfSource(tmp_path / "copy.vcf.gz").describe()
    assert a["sha256"] == b["sha256"] and a["size"] == b["size"]


def _random_records(rng: np.random.Generator, n: int, n_samples: int) -> tuple:
    """Raw records with shared positions (split multiallelics), duplicates, non-SNVs and multi-ALT records."""
    pos = np.cumsum(rng.choice([0, 0, 1, 1, 1, 5], n)) + 100
    refs = [str(rng.choice(["A", "C", "G", "AT"], p=[0.4, 0.3, 0.2, 0.1])) for _ in range(n)]
    alts = [[str(rng.choice(["C", "G", "T", "TTA", "c"]))] for _ in range(n)]
    for i in np.flatnonzero(rng.random(n) < 0.03):
        alts[i] = ["C", "T"]
    gt = rng.integers(0, 2, (n, n_samples, 2), dtype=np.int16)
    phased = np.ones((n, n_samples), dtype=bool)
    af = [(float(x),) for x in rng.random(n)]
    return ["1"] * n, pos.tolist(), [f"r{i}" for i in range(n)], refs, alts, gt, phased, af


def test_whole_block_path_equals_record_by_record_path(monkeypatch):
    """The filter's whole-block fast path keeps the same sites, counts and state as its record loop."""
    from vcfstore.sources.policy import InputPolicy, RecordFilter

    rng = np.random.default_rng(0)
    decided: list[bool] = []
    for trial in range(60):
        policy = InputPolicy(
            multiallelic=str(rng.choice(["split", "collapse"])),
            non_snv=str(rng.choice(["skip", "keep"])),
            duplicates="skip",
        )
        contigs, pos, ids, refs, alts, gt, phased, af = _random_records(rng, 400, 3)
        if trial % 3 == 0:  # contigs that start at a block's first record (the fast path) and mid-block
            contigs = ["1"] * 150 + ["2"] * 130 + ["3"] * 120
        if trial % 2:  # biallelic SNVs, distinct at shared positions (rarely not): the fast path's blocks
            rank = [0] * len(pos)
            for i in range(1, len(pos)):
                rank[i] = rank[i - 1] + 1 if pos[i] == pos[i - 1] else 0
            alts = [["CGTC"[r % 4] if rng.random() > 0.1 else "AT"] for r in rank]
            refs = ["A"] * len(refs)
        outs = []
        for fast in (True, False):
            f = RecordFilter(policy)
            if fast:  # count the blocks it decides, and those among them with sites sharing a position
                plain = f._plain_block

                def counted(*args, plain=plain, f=f):
                    before = f.counts["sites_sharing_a_position"]
                    rows = plain(*args)
                    if rows is not None:
                        decided.append(f.counts["sites_sharing_a_position"] > before)
                    return rows

                monkeypatch.setattr(f, "_plain_block", counted)
            else:
                monkeypatch.setattr(f, "_plain_block", lambda *a, **k: None)
            blocks = []
            for s in range(0, 400, 50):  # blocks of 50 records: state carried across block edges
                sl = slice(s, s + 50)
                blocks.append(f(contigs[sl], pos[sl], ids[sl], refs[sl], alts[sl], gt[sl], phased[sl], af[sl]))
            outs.append((blocks, dict(f.counts), f._site_pos, f._last_pos, set(f._site_alleles)))
            monkeypatch.undo()
        (fb, fc, *fs), (sb, sc, *ss) = outs
        assert fc == sc and fs == ss
        for a, b in zip(fb, sb, strict=True):
            assert a.contigs == b.contigs and a.ids == b.ids and a.refs == b.refs and a.alts == b.alts
            np.testing.assert_array_equal(a.positions, b.positions)
            np.testing.assert_array_equal(a.alleles, b.alleles)
            np.testing.assert_array_equal(a.info_af, b.info_af)
    assert len(decided) > 50 and sum(decided) > 20  # the fast path ran, on shared positions too


def test_raw_genotype_codes_decode_as_cyvcf2_arrays(tmp_path, monkeypatch):
    """The reader copies htslib's raw GT codes and decodes them a block at a time: the same allele codes
    and phase flags as cyvcf2's own per-record arrays (missing and phased-missing alleles, unphased
    calls, allele indices past 1), in buffers of 3 records, with an early stop that ends the reader."""
    import threading

    from cyvcf2 import VCF

    from vcfstore.sources import vcf as vcf_module
    from vcfstore.sources.policy import RecordFilter

    rng = np.random.default_rng(5)
    calls = ["0|0", "0|1", "1|0", "1|1", "0/1", "1/0", ".|.", "./.", ".|1", "0|.", "2|1", "1/2", "3|0"]
    records = [
        (str(1 + i // 9), 10 + i, f"r{i}", "A", "G,T,C", [str(rng.choice(calls)) for _ in range(4)]) for i in range(20)
    ]
    path = write_vcf(tmp_path / "calls.vcf.gz", records, samples=("a", "b", "c", "d"))
    monkeypatch.setattr(vcf_module, "RAW_BUFFER_BYTES", 3 * 4 * 8)  # 3 records of 4 samples a buffer
    seen = []
    filter_call = RecordFilter.__call__

    def capture(self, contigs, positions, ids, refs, alts, gt, phased, info_af):
        seen.append((list(positions), gt.copy(), phased.copy()))
        return filter_call(self, contigs, positions, ids, refs, alts, gt, phased, info_af)

    monkeypatch.setattr(RecordFilter, "__call__", capture)
    policy = vs.InputPolicy(missing="mask", unphased="keep")
    blocks = list(vs.VcfSource(path, policy=policy).blocks(block_sites=1024))
    assert [len(p) for p, _, _ in seen] == [3] * 6 + [2] and sum(len(b) for b in blocks) > 20
    want = np.stack([rec.genotype.array() for rec in VCF(str(path))])
    np.testing.assert_array_equal(np.concatenate([g for _, g, _ in seen]), want[:, :, :2])
    np.testing.assert_array_equal(np.concatenate([p for _, _, p in seen]), want[:, :, 2] == 1)

    source = vs.VcfSource(path, policy=policy)
    reader = source.blocks()
    next(reader)
    reader.close()  # the caller stops early: the reader thread ends and closes the file
    assert not any(t.name == "vcfstore-vcf-reader" for t in threading.enumerate())
