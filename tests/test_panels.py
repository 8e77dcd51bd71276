"""Real panels as they come: split multiallelic sites, collapse, truncated BGZF, windows CSVs, full disks."""

from __future__ import annotations

import gzip
import re
import struct
import subprocess
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vcfstore as vs
from tests.helpers import write_vcf
from vcfstore.app.cli import main
from vcfstore.errors import InputWarning
from vcfstore.sources.vcf import BGZF_EOF
from vcfstore.store import read_frequencies, read_sample_annotations

pysam = pytest.importorskip("pysam")


def _multiallelic_records(seed: int = 3, n_records: int = 120, n_samples: int = 6) -> list[tuple]:
    """Random phased records: biallelic and multiallelic SNVs, SNV+indel mixes, indels, with INFO/AF."""
    rng = np.random.default_rng(seed)
    recs, pos = [], 1000
    for i in range(n_records):
        pos += int(rng.integers(1, 40))
        ref = "ACGT"[rng.integers(4)]
        others = [b for b in "ACGT" if b != ref]
        kind = rng.random()
        if kind < 0.45:
            alts = [others[rng.integers(3)]]
        elif kind < 0.8:
            alts = [str(b) for b in rng.choice(others, size=int(rng.integers(2, 4)), replace=False)]
        elif kind < 0.9:
            alts = [others[0], ref + "T"]
        else:
            alts = [ref + "G"]
        gts = [f"{rng.integers(len(alts) + 1)}|{rng.integers(len(alts) + 1)}" for _ in range(n_samples)]
        af = ",".join(f"{x:.3f}" for x in rng.random(len(alts)) / len(alts))
        recs.append(("20", pos, f"v{i}", ref, ",".join(alts), gts, f"AF={af}"))
    return recs


def _parse(path: Path) -> list[tuple[int, str, list[str], np.ndarray, list[float]]]:
    """(pos, REF, ALTs, allele index per haplotype, INFO/AF) per record, by plain text parsing."""
    out = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        for line in f:
            if line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            haps = np.asarray([int(a) for g in fields[9:] for a in g.split("|")])
            af = [float(x) for x in fields[7].removeprefix("AF=").split(",")]
            out.append((int(fields[1]), fields[3], fields[4].split(","), haps, af))
    return out


def _is_snv(ref: str, alt: str) -> bool:
    return len(ref) == 1 and len(alt) == 1


def _site_table(store: vs.PanelStore) -> list[tuple[int, str, str]]:
    t = store.site_table()
    return list(zip(t["position"].tolist(), t["ref"].tolist(), t["alt"].tolist(), strict=True))


def _norm_split(src: Path, out: Path) -> Path:
    from pysam import bcftools

    out.write_bytes(bcftools.norm("-m", "-any", "-Ob", str(src)))
    return out


@pytest.fixture
def multi_vcf(tmp_path) -> Path:
    return write_vcf(tmp_path / "multi.vcf", _multiallelic_records(), [f"s{i}" for i in range(6)])


def test_split_panel_from_bcftools_norm_builds_like_the_multiallelic_file(tmp_path, multi_vcf):
    assert vs.InputPolicy().multiallelic == "split"
    split_bcf = _norm_split(multi_vcf, tmp_path / "split.bcf")
    r = CliRunner().invoke(main, ["build", str(split_bcf), str(tmp_path / "cli"), "--quiet", "--window-size", "50"])
    assert r.exit_code == 0, r.output
    a = vs.build_store(vs.VcfSource(split_bcf), tmp_path / "a", window_size=50, progress=False)
    b = vs.build_store(vs.VcfSource(multi_vcf), tmp_path / "b", window_size=50, progress=False)
    # The oracle: one site per SNV ALT of each record, in file order; carriers of that ALT are 1.
    sites, alleles = [], []
    for pos, ref, alts, haps, _ in _parse(multi_vcf):
        for k, alt in enumerate(alts, start=1):
            if _is_snv(ref, alt):
                sites.append((pos, ref, alt))
                alleles.append(haps == k)
    assert len(set(p for p, _, _ in sites)) < len(sites)  # the panel has sites sharing a position
    for store in (a, b):
        assert _site_table(store) == sites
        np.testing.assert_array_equal(store.read_alleles(0, store.n_sites), np.asarray(alleles).T)
    assert a.meta["counts"]["sites_sharing_a_position"] == b.meta["counts"]["sites_sharing_a_position"] > 0


def test_true_duplicate_is_named_and_can_be_skipped(tmp_path, multi_vcf):
    from pysam import bcftools

    text = bcftools.norm("-m", "-any", "-Ov", str(multi_vcf))
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    dup = tmp_path / "dup.vcf"
    dup.write_text("".join([*lines[: first + 1], lines[first], *lines[first + 1 :]]))
    pos, ref, alt = lines[first].split("\t")[1], lines[first].split("\t")[3], lines[first].split("\t")[4]
    with pytest.raises(vs.InputError, match=rf"record 20:{pos} \(v0\) repeats the site {ref}>{alt} .*duplicate site"):
        vs.build_store(vs.VcfSource(dup), tmp_path / "d", progress=False)
    s = vs.build_store(vs.VcfSource(dup, policy=vs.InputPolicy(duplicates="skip")), tmp_path / "d", progress=False)
    ref_store = vs.build_store(vs.VcfSource(multi_vcf), tmp_path / "r", progress=False)
    assert s.meta["counts"]["skipped_duplicate"] == 1 and _site_table(s) == _site_table(ref_store)


def _vcfbert_load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """VCF-Bert's loader, re-implemented: every record is a row, GT[GT > 0] = 1 (haplotypes x records)."""
    recs = _parse(path)
    gt = np.stack([haps for _, _, _, haps, _ in recs])
    gt[gt > 0] = 1
    return gt.T.astype(np.uint8), np.asarray([r[0] for r in recs])


def test_collapse_matches_vcfbert_loader_and_its_windows(tmp_path, multi_vcf):
    alleles, pos = _vcfbert_load(multi_vcf)
    windows = np.asarray([[0, 40], [40, 100], [100, len(pos)]])
    policy = vs.InputPolicy(multiallelic="collapse", non_snv="keep")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # one site per record: nothing to warn about
        s = vs.build_store(
            vs.VcfSource(multi_vcf, policy=policy), tmp_path / "c", windows=windows, af_from="info", progress=False
        )
    np.testing.assert_array_equal(s.positions, pos)
    np.testing.assert_array_equal(s.read_alleles(0, s.n_sites), alleles)
    for w, (a, b) in enumerate(windows):
        np.testing.assert_array_equal(s.window_alleles(w), alleles[:, a:b])
    recs = _parse(multi_vcf)
    assert list(s.site_table()["alt"]) == [",".join(r[2]) for r in recs]
    np.testing.assert_allclose(s.af, [sum(r[4]) for r in recs], rtol=1e-6)  # INFO/AF of any ALT
    assert s.meta["counts"]["collapsed_multiallelic"] == sum(len(r[2]) > 1 for r in recs)
    # The default policy drops indels and splits: a VCF-Bert windows table would not line up.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        vs.build_store(vs.VcfSource(multi_vcf), tmp_path / "d", windows=np.asarray([[0, 10]]), progress=False)
    assert any("--multiallelic collapse --non-snv keep" in str(w.message) for w in caught)


def test_collapse_with_non_snv_skip_drops_records_with_any_indel_allele(tmp_path, multi_vcf):
    s = vs.build_store(
        vs.VcfSource(multi_vcf, policy=vs.InputPolicy(multiallelic="collapse")), tmp_path / "c", progress=False
    )
    kept = [r for r in _parse(multi_vcf) if all(_is_snv(r[1], a) for a in r[2])]
    assert _site_table(s) == [(p, ref, ",".join(alts)) for p, ref, alts, _, _ in kept]
    np.testing.assert_array_equal(s.read_alleles(0, s.n_sites), np.stack([r[3] > 0 for r in kept]).T)


# --- truncated files --------------------------------------------------------------------------


def _bgzf(pieces: list[bytes]) -> bytes:
    """A BGZF file with one block per piece (so blocks end at line boundaries), then the EOF block."""
    out = []
    for data in pieces:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = c.compress(data) + c.flush()
        header = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00"
        out.append(header + struct.pack("<H", 18 + len(body) + 8 - 1) + body)
        out.append(struct.pack("<II", zlib.crc32(data), len(data)))
    return b"".join(out) + BGZF_EOF


def _block_offsets(data: bytes) -> list[int]:
    offsets, off = [], 0
    while off < len(data):
        offsets.append(off)
        off += struct.unpack("<H", data[off + 16 : off + 18])[0] + 1
    assert off == len(data)
    return offsets


def _count_records(path: Path) -> int:
    from cyvcf2 import VCF

    return sum(1 for _ in VCF(str(path)))


def test_bgzf_cut_at_a_block_boundary_is_refused(tmp_path, multi_vcf):
    lines = multi_vcf.read_bytes().splitlines(keepends=True)
    pieces = [b"".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    full = tmp_path / "full.vcf.gz"
    full.write_bytes(_bgzf(pieces))
    assert _count_records(full) == 120 and vs.VcfSource(full).samples
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(full.read_bytes()[: _block_offsets(full.read_bytes())[-3]])  # drop the last piece and EOF
    assert 0 < _count_records(cut) < 120  # htslib alone reads a shorter, valid-looking panel
    with pytest.raises(vs.InputError, match="lacks the BGZF end-of-file marker"):
        vs.VcfSource(cut)
    r = CliRunner().invoke(main, ["build", str(cut), str(tmp_path / "o"), "--quiet"])
    assert r.exit_code == 1 and "truncated or corrupt" in r.output and len(r.output.strip().splitlines()) == 1


def test_bcf_cut_at_a_block_boundary_is_refused(tmp_path):
    from pysam import bcftools

    recs = _multiallelic_records(seed=5, n_records=400, n_samples=300)
    src = write_vcf(tmp_path / "big.vcf", recs, [f"s{i}" for i in range(300)])
    data = bcftools.view("-Ob", str(src))
    offsets = _block_offsets(data)
    assert len(offsets) >= 3
    cut = tmp_path / "cut.bcf"
    cut.write_bytes(data[: offsets[-2]])  # every data block, no EOF block
    with pytest.raises(vs.InputError, match="lacks the BGZF end-of-file marker"):
        vs.VcfSource(cut)


def test_plain_gzip_cut_at_a_flush_point_is_refused(tmp_path):
    recs = _multiallelic_records(seed=6, n_records=300, n_samples=300)
    text = write_vcf(tmp_path / "big.vcf", recs, [f"s{i}" for i in range(300)]).read_bytes()
    co = zlib.compressobj(6, zlib.DEFLATED, 31)  # a plain gzip stream, not BGZF
    half = text.index(b"\n", len(text) // 2) + 1
    head = co.compress(text[:half]) + co.flush(zlib.Z_FULL_FLUSH)
    path = tmp_path / "plain.vcf.gz"
    path.write_bytes(head)
    with pytest.raises(vs.InputError, match="truncated or corrupt"):
        vs.build_store(vs.VcfSource(path), tmp_path / "p", progress=False)
    path.write_bytes(head + co.compress(text[half:]) + co.flush())
    assert vs.build_store(vs.VcfSource(path), tmp_path / "p", progress=False).n_sites > 0


def test_unindexed_build_prints_no_htslib_index_noise(tmp_path, multi_vcf, capfd):
    vs.build_store(vs.VcfSource(multi_vcf), tmp_path / "s", progress=False)
    assert "index" not in capfd.readouterr().err


# --- windows CSVs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_contigs():
    """A panel of 100 sites on contig 1 and 60 on contig 2."""
    rng = np.random.default_rng(0)
    alleles = rng.integers(0, 2, (8, 160), dtype=np.uint8)
    positions = np.concatenate([np.arange(100) * 10 + 5, np.arange(60) * 10 + 5])
    return alleles, positions, ["1"] * 100 + ["2"] * 60


def _build_windows(tmp_path, two_contigs, windows, **kwargs):
    alleles, positions, contigs = two_contigs
    return vs.build_from_arrays(alleles, positions, tmp_path / "w", contigs=contigs, windows=windows, **kwargs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("start,end\n0,10\n30,20\n", "line 3 = [30, 20) is reversed"),
        ("start,end\n0,10\n10,10\n", "line 3 = [10, 10) is empty"),
        ("start,end\n-5,10\n", "line 2 = [-5, 10) starts at a negative site"),
        ("start,end\n0,10\n5,20\n", "line 3 = [5, 20) overlaps line 2 = [0, 10); pass allow_overlap"),
        ("start,end\n10,20\n0,5\n30,40\n", "looks like a per-contig index table"),
        ("start,end\n20,30\n10,15\n", "must be sorted by start site"),
        ("start,end\n0,1.5\n", "line 2: '1.5' is not an integer site index"),
        ("start,end\n0,ten\n", "line 2: 'ten' is not an integer site index"),
        ("start,end\n0,99999999999999999999\n", "is far too large to be a site index"),
        ("start,end,pos\n0,10,5\n", "unknown column(s) 'pos' in the header"),
        ("a,b\n0,10\n", "unknown column(s) 'a', 'b'"),
        ("start,start_index\n0,10\n", "exactly one start and one end column"),
        ("0,10,20\n", "line 1: 3 columns; a file without a header has exactly two"),
        ("start,end\n", "has no windows"),
        ("\n\n", "is empty"),
    ],
)
def test_windows_csv_errors_at_read(tmp_path, text, message):
    path = tmp_path / "w.csv"
    path.write_text(text)
    with pytest.raises(vs.InputError, match=re.escape(message)) as e:
        vs.read_windows_csv(path)
    assert "\n" not in str(e.value)


def test_windows_csv_good_forms(tmp_path):
    for text in (
        "start,end\n0,10\n10,20\n",
        "END_INDEX,Start_Index\n10,0\n20,10\n",
        "0,10\n10,20\n",
        ",start,end\n0,0,10\n1,10,20\n",
    ):
        (tmp_path / "w.csv").write_text(text)
        np.testing.assert_array_equal(vs.read_windows_csv(tmp_path / "w.csv"), [[0, 10], [10, 20]])
    (tmp_path / "w.csv").write_text("start,end\n0,10\n5,20\n")
    np.testing.assert_array_equal(vs.read_windows_csv(tmp_path / "w.csv", allow_overlap=True), [[0, 10], [5, 20]])


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        (
            [[0, 50], [50, 200]],
            r"window 1 = \[50, 200\) ends at site 200 but the panel has 160 sites .*not bp positions",
        ),
        ([[0, 50], [90, 110]], r"window 1 = \[90, 110\) spans contigs 1 and 2"),
        ([[0, 50], [50, 100], [0, 60]], "per-contig index table"),
        ([[0, 50], [40, 100]], "overlaps window 0"),
        ([[0, 50], [60, 50]], "is reversed"),
    ],
)
def test_windows_errors_at_build(tmp_path, two_contigs, windows, message):
    with pytest.raises(vs.InputError, match=message):
        _build_windows(tmp_path, two_contigs, np.asarray(windows))
    assert not (tmp_path / "w").exists()


def test_windows_gaps_warn_with_count_and_overlap_when_asked(tmp_path, two_contigs):
    with pytest.warns(InputWarning, match=r"leave 130 of the panel's 160 sites outside every window \(4 gap"):
        s = _build_windows(tmp_path, two_contigs, np.asarray([[10, 20], [30, 40], [100, 110]]))
    assert s.n_windows == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        s = _build_windows(
            tmp_path, two_contigs, np.asarray([[0, 60], [40, 100], [100, 160]]), allow_overlap=True, force=True
        )
    np.testing.assert_array_equal(s.window_alleles(1), two_contigs[0][:, 40:100])


def test_window_size_with_windows_is_an_error(tmp_path, two_contigs, real_data):
    with pytest.raises(vs.ArgumentError, match="not both"):
        _build_windows(tmp_path, two_contigs, np.asarray([[0, 10]]), window_size=10)
    with pytest.raises(vs.ArgumentError, match="not both"):
        _build_windows(tmp_path, two_contigs, np.asarray([[0, 10]]), overlap=2)
    csv = tmp_path / "w.csv"
    csv.write_text("start,end\n0,10\n5,20\n")
    ref = str(real_data / "reference.vcf.gz")
    r = CliRunner().invoke(main, ["build", ref, str(tmp_path / "o"), "--windows", str(csv), "--window-size", "10"])
    assert r.exit_code == 2 and "cannot be combined with --window-size" in r.output
    r = CliRunner().invoke(main, ["build", ref, str(tmp_path / "o"), "--windows", str(csv), "--quiet"])
    assert r.exit_code == 1 and "overlaps" in r.output
    r = CliRunner().invoke(
        main, ["build", ref, str(tmp_path / "o"), "--windows", str(csv), "--allow-overlap", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert "Warning: the windows leave 23650 of the panel's 23670 sites" in r.output


# --- file-system errors ----------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_and_read_only_stop_with_one_line_and_resume(tmp_path, small_fs, monkeypatch):
    monkeypatch.setattr("vcfstore.store.builder.COMMIT_BYTES", 0)  # a shard a commit: some fit, then the disk is full
    rng = np.random.default_rng(1)
    alleles = rng.integers(0, 2, (256, 12288), dtype=np.uint8)  # random: 384 KiB packed, incompressible
    positions = np.arange(1, 12289) * 10
    panel = _panel_file(tmp_path / "p.panel", [f"sample{i}" for i in range(128)], seed=1)
    out = small_fs / "store"
    with pytest.raises(vs.StoreError, match=r"the build stopped: No space left on device .*run the same command"):
        vs.build_from_arrays(alleles, positions, out, window_size=500, annotations=panel)
    committed = vs.store.read_store_attrs(out)["vcfstore_build"]["sites"]
    assert 0 < committed < 12288
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_fs)], check=True)
    s = vs.build_from_arrays(alleles, positions, out, window_size=500, annotations=panel)
    assert s.meta["resumed_from_site"] == committed
    np.testing.assert_array_equal(s.read_alleles(0, s.n_sites), alleles)
    whole = vs.build_from_arrays(alleles, positions, tmp_path / "whole", window_size=500, annotations=panel)
    np.testing.assert_array_equal(s.windows, whole.windows)
    np.testing.assert_array_equal(read_frequencies(s)[1], read_frequencies(whole)[1])
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(vs.StoreError, match=r"stopped: Read-only file system") as e:
        vs.build_from_arrays(alleles, positions, small_fs / "other", window_size=500)
    assert "\n" not in str(e.value)
    subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert vs.build_from_arrays(alleles[:, :2048], positions[:2048], small_fs / "other").n_sites == 2048


# --- sample annotations and per-population frequencies ----------------------------------------

SUPER_POPS = ("AFR", "AMR", "EAS", "EUR", "SAS")


def _panel_file(path: Path, samples: list[str], seed: int, shuffle: bool = False, extra: int = 0) -> Path:
    """A 1000 Genomes style .panel file: header, then sample pop super_pop gender per line."""
    rng = np.random.default_rng(seed)
    names = list(samples) + [f"other{i}" for i in range(extra)]
    if shuffle:
        names = [names[i] for i in rng.permutation(len(names))]
    lines = ["sample\tpop\tsuper_pop\tgender"]
    for name in names:
        sp = SUPER_POPS[rng.integers(len(SUPER_POPS))]
        lines.append(f"{name}\t{sp[:2]}{rng.integers(3)}\t{sp}\t{('male', 'female')[rng.integers(2)]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _brute_frequencies(alleles: np.ndarray, super_pop: list[str]) -> np.ndarray:
    """[4, groups + Global, n_sites] by counting genotypes site by site in float64."""
    groups = sorted(set(super_pop))
    out = np.zeros((4, len(groups) + 1, alleles.shape[1]))
    for g, name in enumerate([*groups, None]):
        samples = [i for i, sp in enumerate(super_pop) if name is None or sp == name]
        for site in range(alleles.shape[1]):
            dosage = [int(alleles[2 * i, site]) + int(alleles[2 * i + 1, site]) for i in samples]
            for k in range(3):
                out[k, g, site] = dosage.count(k) / len(samples)
            out[3, g, site] = sum(dosage) / (2 * len(samples))
    return out


def test_panel_file_annotations_and_population_frequencies(tmp_path):
    rng = np.random.default_rng(4)
    alleles = rng.integers(0, 2, (60, 300), dtype=np.uint8) & rng.integers(0, 2, (1, 300), dtype=np.uint8)
    samples = [f"sample{i}" for i in range(30)]
    panel = _panel_file(tmp_path / "s.panel", samples, seed=2, shuffle=True, extra=4)
    with pytest.warns(InputWarning, match="another order than the panel; vcfstore pairs them by name"):
        s = vs.build_from_arrays(alleles, np.arange(1, 301), tmp_path / "s", window_size=100, annotations=panel)
    rows = {line.split("\t")[0]: line.split("\t") for line in panel.read_text().splitlines()[1:]}
    ann = read_sample_annotations(s)
    assert list(ann.super_pop) == [rows[n][2] for n in samples] and list(ann.gender) == [rows[n][3] for n in samples]
    groups, freq = read_frequencies(s)
    assert groups == [*sorted(set(ann.super_pop.tolist())), "Global"] and freq.dtype == np.float32
    np.testing.assert_allclose(freq, _brute_frequencies(alleles, list(ann.super_pop)), atol=1e-6)
    np.testing.assert_allclose(freq[3, -1], s.af, atol=1e-6)  # the global AF is the panel's AF
    assert read_frequencies(vs.build_from_arrays(alleles, np.arange(1, 301), tmp_path / "plain")) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id\tpop\n", "must be a header naming sample, pop and super_pop"),
        ("sample pop super_pop gender\nsample0 GBR EUR male\n", "lacks 1 of the panel's 2 samples (first: sample1)"),
        (
            "sample pop super_pop\nsample0 GBR EUR\nsample0 GBR EUR\nsample1 YRI AFR\n",
            "line 3: sample sample0 is listed twice",
        ),
        ("sample pop super_pop gender\nsample0 GBR\n", "line 2: 2 fields; the header has 4"),
    ],
)
def test_bad_panel_files(tmp_path, text, message):
    (tmp_path / "p.panel").write_text(text)
    with pytest.raises(vs.InputError, match=re.escape(message)):
        vs.build_from_arrays(
            np.zeros((4, 8), np.uint8), np.arange(1, 9), tmp_path / "s", annotations=tmp_path / "p.panel"
        )


def test_cli_samples_panel(tmp_path, multi_vcf):
    panel = _panel_file(tmp_path / "s.panel", [f"s{i}" for i in range(6)], seed=3)
    r = CliRunner().invoke(
        main, ["build", str(multi_vcf), str(tmp_path / "o"), "--samples-panel", str(panel), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert read_frequencies(vs.open_store(tmp_path / "o"))[1].shape[2] == vs.open_store(tmp_path / "o").n_sites


def test_array_source_digest_reads_a_memory_map_in_blocks(tmp_path):
    """The provenance digest of a memory-mapped panel is that of its bytes, without a copy of it in RAM."""
    import hashlib
    import tracemalloc

    rng = np.random.default_rng(2)
    alleles = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.uint8, shape=(1000, 20_000))
    alleles[:] = rng.integers(0, 2, alleles.shape, dtype=np.uint8)
    positions = np.arange(1, 20_001, dtype=np.int64)
    src = vs.ArraySource(alleles, positions)
    tracemalloc.start()
    digest = src.describe()["sha256"]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    want = hashlib.sha256(np.asarray(alleles).tobytes() + positions.tobytes())
    want.update("\t".join(src.contigs + src.samples).encode())
    assert digest == want.hexdigest()
    assert peak < alleles.nbytes / 4, peak  # the whole array is 20 MB
    transposed = vs.ArraySource(np.ascontiguousarray(alleles.T).T, positions)  # a non-contiguous view
    assert transposed.describe()["sha256"] == digest
