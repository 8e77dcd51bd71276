"""Partitioned builds: a store built from parts equals the serial build, file for file.

The oracle is the serial :func:`build_store` on the same input: every file but the root
``zarr.json`` must have the same bytes (array chunks, array metadata, ``checksums.json``), and
the root attributes must be equal except ``finished``, the time stamp.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import vcfstore as vs
from tests.helpers import vcf_from_arrays, write_vcf
from vcfstore.store import partitioned as part
from vcfstore.store.format import ATTR_KEY

# Only the time stamp differs (and resumed_from_site, when the finalise step itself resumes).
DIFFERING_ATTRS = {"finished"}


def _files(store: Path) -> dict[str, str]:
    return {
        p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).as_posix() != "zarr.json"
    }


def _attrs(store: Path) -> dict:
    return dict(zarr.open_group(str(store), mode="r").attrs[ATTR_KEY])


def assert_same_store(serial: Path, parted: Path) -> None:
    a, b = _files(serial), _files(parted)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    attrs_a, attrs_b = _attrs(serial), _attrs(parted)
    assert {k for k in attrs_a.keys() | attrs_b.keys() if attrs_a.get(k) != attrs_b.get(k)} <= DIFFERING_ATTRS
    assert attrs_a["finished"] and attrs_b["finished"]


def _bgzip_index(plain: Path) -> Path:
    """bgzip and tabix-index a plain-text VCF (pysam; the .vcf is replaced by .vcf.gz and .tbi)."""
    import pysam

    return Path(pysam.tabix_index(str(plain), preset="vcf", force=True))


def _multi_contig_vcf(tmp: Path, alleles: np.ndarray, positions: np.ndarray) -> Path:
    """The simulated panel as three contigs (the sites split in three), bgzipped and indexed."""
    cuts = [0, len(positions) // 3, 2 * len(positions) // 3, len(positions)]
    header, body = "", []
    for c, (a, b) in enumerate(itertools.pairwise(cuts)):
        gz = vcf_from_arrays(tmp / f"c{c}.vcf.gz", alleles[:, a:b], positions[a:b], contig=f"chr{c + 1}")
        lines = gzip.open(gz, "rt").read().splitlines(keepends=True)
        if not header:
            header = "".join(line for line in lines if line.startswith("##"))
            columns = next(line for line in lines if line.startswith("#CHROM"))
        header += f"##contig=<ID=chr{c + 1}>\n" if c else ""
        body += [line for line in lines if not line.startswith("#")]
    plain = tmp / "multi.vcf"
    plain.write_text(header + columns + "".join(body))
    return _bgzip_index(plain)


def _panel_file(path: Path, samples: list[str]) -> Path:
    rows = [f"{s}\tP{i % 3}\t{'EUR' if i % 2 else 'AFR'}\tmale" for i, s in enumerate(samples)]
    path.write_text("sample\tpop\tsuper_pop\tgender\n" + "\n".join(rows) + "\n")
    return path


def _parted(source: Path, out: Path, n: int, **kwargs) -> vs.PanelStore:
    """plan, build each part and finalise, in this process (so monkeypatches apply)."""
    policy = kwargs.pop("policy", None)
    plan = part.plan_partitions(source, out, partitions=n, policy=policy, **kwargs)
    for i in range(len(plan["partitions"])):
        part.build_partition(out, i)
    store = part.finalise_partitions(out, progress=False)
    assert not part.default_work_dir(out).exists()  # the intermediates are removed
    return store


@pytest.fixture(scope="module")
def multi_vcf(sim_arrays, tmp_path_factory) -> Path:
    alleles, positions = sim_arrays
    return _multi_contig_vcf(tmp_path_factory.mktemp("multi"), alleles, positions)


@pytest.mark.parametrize("n", [2, 3])
def test_simulated_multi_contig_vcf_equals_serial(multi_vcf, tmp_path, n):
    samples = vs.VcfSource(multi_vcf).samples
    kwargs = {"window_size": 300, "overlap": 20, "annotations": _panel_file(tmp_path / "s.panel", samples)}
    serial = vs.build_store(vs.VcfSource(multi_vcf), tmp_path / "serial", progress=False, **kwargs)
    plan = part.plan_partitions(multi_vcf, tmp_path / "parted", partitions=n, **kwargs)
    assert len(plan["partitions"]) >= n  # the index has enough places to cut this file
    for i in range(len(plan["partitions"])):
        record = part.build_partition(tmp_path / "parted", i)
        assert record["sites"] > 0 and not record["skipped"]
    assert part.build_partition(tmp_path / "parted", 0)["skipped"]  # a finished part is not redone
    parted = part.finalise_partitions(tmp_path / "parted", progress=False)
    assert_same_store(tmp_path / "serial", tmp_path / "parted")
    assert serial.n_sites == parted.n_sites and len(serial.contigs) == 3
    assert np.array_equal(serial.read_alleles(0, serial.n_sites), parted.read_alleles(0, parted.n_sites))


# Records around position 500: a split multiallelic record (bcftools norm -m -any writes two records
# at one position), a duplicate of one of its sites, a multiallelic record split by the policy, and
# a deletion starting at 499 that overlaps 500 (a region query starting at 500 returns it too).
def _boundary_records() -> list[tuple]:
    gts = [["0|1", "1|0", "0|0"], ["1|1", "0|1", "1|0"], ["0|0", "1|1", "0|1"]]
    records = [("chr1", p, f"r{p}", "A", "C", gts[p % 3], f"AF={0.1 + p % 7 / 10:.1f}") for p in range(100, 499, 7)]
    records += [
        ("chr1", 499, "del", "AT", "A", gts[0], "AF=0.2"),
        ("chr1", 500, "s1", "A", "C", gts[1], "AF=0.3"),
        ("chr1", 500, "s2", "A", "G", gts[2], "AF=0.4"),
        ("chr1", 500, "dup", "A", "C", gts[0], "AF=0.3"),
        ("chr1", 501, "multi", "C", "G,T", ["0|1", "2|0", "1|2"], "AF=0.1,0.2"),
    ]
    records += [("chr1", p, f"r{p}", "G", "T", gts[p % 3], "AF=0.5") for p in range(505, 900, 5)]
    records += [("chr2", p, f"q{p}", "T", "C", gts[p % 3], "AF=0.6") for p in range(1, 300, 3)]
    return records


@pytest.mark.parametrize(
    "cuts", [[(1, 499), (500, 500), (501, None)], [(1, 500), (501, None)], [(1, 498), (499, None)]]
)
def test_split_multiallelic_and_duplicates_at_a_boundary(tmp_path, monkeypatch, cuts):
    vcf = _bgzip_index(write_vcf(tmp_path / "b.vcf", _boundary_records(), ("S1", "S2", "S3")))
    policy = vs.InputPolicy(duplicates="skip", non_snv="keep")
    regions = [
        {"region": f"chr1:{a}-{'' if b is None else b}", "contig": "chr1", "start": a, "end": b} for a, b in cuts
    ]
    regions.append({"region": "chr2:1-", "contig": "chr2", "start": 1, "end": None})
    monkeypatch.setattr(part, "_vcf_partitions", lambda path, n: regions)
    kwargs = {"window_size": 50, "af_from": "info"}
    serial = vs.build_store(vs.VcfSource(vcf, policy=policy), tmp_path / "serial", progress=False, **kwargs)
    parted = _parted(vcf, tmp_path / "parted", len(regions), policy=policy, **kwargs)
    assert_same_store(tmp_path / "serial", tmp_path / "parted")
    counts = _attrs(tmp_path / "parted")["counts"]
    assert counts["skipped_duplicate"] == 1 and counts["split_multiallelic"] == 1
    assert counts["records"] == len(_boundary_records())
    assert list(parted.positions).count(499) == 1  # the deletion is read once, by the part holding its POS
    assert serial.n_sites == parted.n_sites


def _vcf_zarr(vcf: Path, out: Path, chunk: int) -> Path:
    from bio2zarr import vcf as b2z

    b2z.convert([str(vcf)], str(out), variants_chunk_size=chunk, worker_processes=0)
    return out


def test_vcf_zarr_equals_serial(multi_vcf, tmp_path):
    vcz = _vcf_zarr(multi_vcf, tmp_path / "p.vcz", 500)
    n_sites = vs.build_store(vs.VcfZarrSource(vcz), tmp_path / "probe", progress=False).n_sites
    af = np.linspace(0.01, 0.99, n_sites, dtype=np.float32)
    kwargs = {"windows": np.array([[0, 400], [400, 1000], [1000, 1001]]), "af_from": af, "chunk_sites": 256}
    with pytest.warns(vs.InputWarning, match="outside every window"):
        vs.build_store(vs.VcfZarrSource(vcz), tmp_path / "serial", progress=False, **kwargs)
    plan = part.plan_partitions(vcz, tmp_path / "parted", partitions=3, **kwargs)
    assert [p["variants"][0] % 500 for p in plan["partitions"]] == [0, 0, 0]  # cut at its chunks
    for i in range(3):
        part.build_partition(tmp_path / "parted", i)
    with pytest.warns(vs.InputWarning, match="outside every window"):  # as the serial build warned
        part.finalise_partitions(tmp_path / "parted", progress=False)
    assert_same_store(tmp_path / "serial", tmp_path / "parted")
    assert np.array_equal(vs.open_store(tmp_path / "parted").af, af)


def test_vcf_zarr_cut_moves_past_a_shared_position(tmp_path):
    gts = [["0|1", "1|0"], ["1|1", "0|1"], ["0|0", "1|1"]]
    records = [("1", 10 * (i + 1), f"r{i}", "A", "C", gts[i % 3]) for i in range(300)]
    # Records 99, 100 and 101 share a position across the chunk boundary at 100; 101 repeats 99's site.
    records[100] = ("1", 1000, "split", "A", "G", gts[1])
    records[101] = ("1", 1000, "dup", "A", "C", gts[2])
    records[102:] = [("1", 1000 + 10 * i, f"s{i}", "A", "C", gts[i % 3]) for i in range(1, 199)]
    vcz = _vcf_zarr(_bgzip_index(write_vcf(tmp_path / "z.vcf", records)), tmp_path / "z.vcz", 100)
    policy = vs.InputPolicy(duplicates="skip")
    plan = part.plan_partitions(vcz, tmp_path / "parted", partitions=3, policy=policy)
    assert [p["variants"] for p in plan["partitions"]] == [[0, 102], [102, 200], [200, 300]]
    vs.build_store(vs.VcfZarrSource(vcz, policy=policy), tmp_path / "serial", window_size=64, progress=False)
    part.plan_partitions(vcz, tmp_path / "parted", partitions=3, policy=policy, window_size=64, force=True)
    for i in range(3):
        part.build_partition(tmp_path / "parted", i)
    part.finalise_partitions(tmp_path / "parted", progress=False)
    assert_same_store(tmp_path / "serial", tmp_path / "parted")
    assert _attrs(tmp_path / "parted")["counts"]["skipped_duplicate"] == 1


def test_real_chr20_with_two_workers(real_data, tmp_path):
    vcf = real_data / "reference.vcf.gz"
    vs.build_store(vs.VcfSource(vcf), tmp_path / "serial", window_size=500, progress=False)
    store = part.build_store_parallel(vcf, tmp_path / "parted", workers=2, window_size=500, progress=False)
    assert_same_store(tmp_path / "serial", tmp_path / "parted")
    assert store.n_sites == 23670 and store.verify() == []


def test_a_killed_or_failed_partition_is_redone(multi_vcf, tmp_path, monkeypatch):
    out = tmp_path / "parted"
    plan = part.plan_partitions(multi_vcf, out, partitions=2)
    work = part.default_work_dir(out)
    # A killed run leaves its temporary directory (another pid): the rerun writes its own.
    leftover = work / ".part-00000.otherhost.1.tmp"
    leftover.mkdir()
    (leftover / "batch-000000.npz.zst").write_bytes(b"cut short")
    calls = {"n": 0}
    real = part._encode_batch

    def fail_second(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real(*args)

    monkeypatch.setattr(part, "_encode_batch", fail_second)
    with pytest.raises(OSError, match="No space left"):
        part.build_partition(out, 1)
    assert not (work / "part-00001").exists() and not part.temp_path(work / "part-00001").exists()
    for i in range(len(plan["partitions"])):
        assert not part.build_partition(out, i)["skipped"]
    part.finalise_partitions(out, progress=False)
    vs.build_store(vs.VcfSource(multi_vcf), tmp_path / "serial", progress=False)
    assert_same_store(tmp_path / "serial", out)


def test_finalise_refuses_missing_parts_and_other_arguments(multi_vcf, tmp_path):
    for suffix in ("", ".tbi"):  # a copy: this test changes the input's modification time
        shutil.copy2(f"{multi_vcf}{suffix}", tmp_path / f"in.vcf.gz{suffix}")
    multi_vcf = tmp_path / "in.vcf.gz"
    out = tmp_path / "parted"
    plan = part.plan_partitions(multi_vcf, out, partitions=3, window_size=200)
    n = len(plan["partitions"])
    for i in range(n):
        if i != 1:
            part.build_partition(out, i)
    with pytest.raises(vs.StoreError, match=rf"1 of {n} partitions are not built \(1\)"):
        part.finalise_partitions(out, progress=False)
    with pytest.raises(vs.ArgumentError, match=rf"partition {n} does not exist"):
        part.build_partition(out, n)
    part.build_partition(out, 1)
    with pytest.raises(vs.ArgumentError, match=r"window_size differs from the plan .*\(200 there, 300 here\)"):
        part.finalise_partitions(out, window_size=300, progress=False)
    with pytest.raises(vs.StoreError, match="holds a partition plan made with other arguments"):
        part.plan_partitions(multi_vcf, out, partitions=3, window_size=300)
    assert part.plan_partitions(multi_vcf, out, partitions=3, window_size=200) == plan  # the same plan is kept
    assert part.build_partition(out, 2)["skipped"]
    os.utime(multi_vcf, ns=(0, 0))  # the input "changed"
    with pytest.raises(vs.InputError, match=r"changed \(or went\) since the partitions were planned"):
        part.finalise_partitions(out, window_size=200, progress=False)
    with pytest.raises(vs.StoreError, match="other arguments"):
        part.plan_partitions(multi_vcf, out, partitions=3, window_size=200)
    part.plan_partitions(multi_vcf, out, partitions=3, window_size=200, force=True)
    assert not (part.default_work_dir(out) / "part-00000").exists()  # parts of the old plan are gone
    with pytest.raises(vs.StoreError, match="no partition plan"):
        part.finalise_partitions(tmp_path / "elsewhere", progress=False)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_part_is_an_error_and_a_rebuilt_one_finishes(multi_vcf, tmp_path, damage):
    out = tmp_path / "parted"
    plan = part.plan_partitions(multi_vcf, out, partitions=2)
    for i in range(len(plan["partitions"])):
        part.build_partition(out, i)
    batch = sorted((part.default_work_dir(out) / "part-00001").glob("batch-*"))[0]
    data = bytearray(batch.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
        batch.write_bytes(bytes(data))
    elif damage == "truncate":
        batch.write_bytes(bytes(data[: len(data) // 2]))
    else:
        batch.unlink()
    with pytest.raises(vs.StoreError, match=r"partition 1 is damaged .*remove .*part-00001 and run partition 1 again"):
        part.finalise_partitions(out, progress=False)
    shutil.rmtree(batch.parent)
    part.build_partition(out, 1)
    part.finalise_partitions(out, progress=False)  # resumes the unfinished store
    vs.build_store(vs.VcfSource(multi_vcf), tmp_path / "serial", progress=False)
    assert_same_store(tmp_path / "serial", out)


def test_vcf_without_index(tmp_path, sim_arrays):
    alleles, positions = sim_arrays
    vcf = vcf_from_arrays(tmp_path / "plain.vcf.gz", alleles[:, :300], positions[:300])
    with pytest.raises(vs.InputError, match=r"needs the file's index \(.tbi or .csi\); index it with `bcftools index"):
        part.plan_partitions(vcf, tmp_path / "x", partitions=2)
    with pytest.warns(vs.InputWarning, match="no .tbi/.csi index, so it is built serially"):
        part.build_store_parallel(vcf, tmp_path / "parted", workers=2, progress=False)
    vs.build_store(vs.VcfSource(vcf), tmp_path / "serial", progress=False)
    assert_same_store(tmp_path / "serial", tmp_path / "parted")


def test_the_first_failing_part_gives_the_error(tmp_path, monkeypatch):
    records = [("1", p, ".", "A", "C", ["0|1", "1|0"]) for p in range(1, 200)]
    records[50] = ("1", 51, "bad1", "A", "C", ["0/1", "1|0"])
    records[150] = ("1", 151, "bad2", "A", "C", ["0/1", "1|0"])
    vcf = _bgzip_index(write_vcf(tmp_path / "u.vcf", records))
    regions = [{"region": f"1:{a}-{b}", "contig": "1", "start": a, "end": b} for a, b in [(1, 100), (101, 300)]]
    monkeypatch.setattr(part, "_vcf_partitions", lambda path, n: regions)
    part.plan_partitions(vcf, tmp_path / "s", partitions=2)
    with pytest.raises(vs.InputError, match=r"record 1:151 \(bad2\) has unphased heterozygous genotypes"):
        part.build_partition(tmp_path / "s", 1)
    with pytest.raises(vs.InputError, match=r"record 1:51 \(bad1\) has unphased"):
        part.run_partitions(tmp_path / "s", range(2), workers=2)
    with pytest.raises(vs.InputError, match=r"record 1:51 \(bad1\)"):
        vs.build_store(vs.VcfSource(vcf), tmp_path / "serial", progress=False)


def test_cli_workers_and_partition_commands(multi_vcf, tmp_path):
    from click.testing import CliRunner

    from vcfstore.app.cli import main

    csv = tmp_path / "w.csv"
    csv.write_text("start,end\n0,500\n500,1000\n")
    common = ["--windows", str(csv), "--quiet"]
    runner = CliRunner()
    r = runner.invoke(main, ["build", str(multi_vcf), str(tmp_path / "serial"), *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["build", str(multi_vcf), str(tmp_path / "w2"), "--workers", "2", *common])
    assert r.exit_code == 0, r.output
    assert_same_store(tmp_path / "serial", tmp_path / "w2")
    out = str(tmp_path / "jobs")
    r = runner.invoke(main, ["partition", "init", str(multi_vcf), out, "--partitions", "3", "--windows", str(csv)])
    assert r.exit_code == 0, r.output
    n = json.loads(r.output.strip().splitlines()[-1])["partitions"]
    assert n >= 3
    r = runner.invoke(main, ["partition", "finalise", out, "--quiet"])
    assert r.exit_code == 1 and f"{n} of {n} partitions are not built" in r.output and "Traceback" not in r.output
    for i in range(n):
        r = runner.invoke(main, ["partition", "run", out, str(i)])
        assert r.exit_code == 0 and json.loads(r.output)["sites"] > 0, r.output
    r = runner.invoke(main, ["partition", "finalise", out, "--quiet"])
    assert r.exit_code == 0, r.output
    assert_same_store(tmp_path / "serial", tmp_path / "jobs")
