"""Builds as processes: kill -9 and resume, and the streaming memory bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import vcfstore as vs
from tests.helpers import vcf_from_arrays
from vcfstore.testing import run_measured

BUILD = """
import sys, vcfstore as vs
vs.build_store(vs.VcfSource(sys.argv[1]), sys.argv[2], window_size=300, chunk_sites=16, progress=False)
"""


def _progress(out: Path) -> int:
    try:
        attrs = json.loads((out / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return 0
    return attrs.get("vcfstore_build", {}).get("sites", 0)


def test_resume_after_kill_equals_uninterrupted_build(tmp_path, sim_arrays):
    alleles, positions = sim_arrays
    vcf = vcf_from_arrays(tmp_path / "panel.vcf.gz", alleles, positions)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", BUILD, str(vcf), str(out)])
    deadline = time.monotonic() + 60
    while _progress(out) < 800 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = _progress(out)
    assert 0 < committed < alleles.shape[1], "the build should have been killed midway"
    try:
        vs.open_store(out)
        raise AssertionError("a killed build must not open as a store")
    except vs.StoreError as e:
        assert "did not finish" in str(e)

    resumed = vs.build_store(vs.VcfSource(vcf), out, window_size=300, chunk_sites=16, progress=False)
    fresh = vs.build_store(vs.VcfSource(vcf), tmp_path / "fresh", window_size=300, chunk_sites=16, progress=False)
    assert resumed.meta["resumed_from_site"] == committed and fresh.meta["resumed_from_site"] is None
    assert resumed.identity == fresh.identity
    for name in ("alleles", "sites/position", "sites/id", "sites/af", "sites/contig", "samples", "windows"):
        np.testing.assert_array_equal(resumed.root[name][:], fresh.root[name][:], err_msg=name)
    np.testing.assert_array_equal(resumed.read_alleles(0, resumed.n_sites), alleles)


MEASURE = """
import sys, vcfstore as vs, zarr.codecs, tqdm.auto  # imports before the baseline: it measures data
from vcfstore.memory import StatmMeter
from vcfstore.simulate import TreeSequenceSource, simulate_panel
source = TreeSequenceSource(simulate_panel(1000, float(sys.argv[1]), seed=3))
print(StatmMeter().read().anon, flush=True)
vs.build_store(source, sys.argv[2], progress=False)
print(vs.open_store(sys.argv[2]).n_sites)
"""


def test_build_memory_is_bounded_by_chunks_not_panel(tmp_path):
    """Peak anonymous memory of a build, sampled from outside, stays under the stated bound.

    2000 haplotypes: the bound is n_haplotypes * (chunk_sites + 2 * block_sites) * 8 bytes =
    65.5 MB, while the larger panel's alleles alone would take 82 MB as uint8 (164 MB as the
    int16 genotype arrays the readers produce), so holding the panel would fail the test.
    """
    bound = 2000 * (2048 + 2 * 1024) * 8
    growth = {}
    for length in (2.5e6, 10e6):
        run = run_measured([sys.executable, "-c", MEASURE, str(length), str(tmp_path / f"s{length}")], interval=0.002)
        assert run.returncode == 0, run.stderr
        baseline, n_sites = (int(x) for x in run.stdout.split())
        growth[length] = run.peak_anon - baseline
        assert growth[length] < bound, f"{n_sites} sites: build grew anonymous memory by {growth[length] / 1e6:.1f} MB"
    assert n_sites * 2000 > bound  # the panel itself does not fit under the bound
    assert growth[10e6] - growth[2.5e6] < 20e6, growth  # 4x the sites, about the same peak


MEASURE_VCF = """
import sys, vcfstore as vs, zarr.codecs, tqdm.auto
from vcfstore.memory import StatmMeter
source = vs.VcfSource(sys.argv[1])
print(StatmMeter().read().anon, flush=True)
vs.build_store(source, sys.argv[2], progress=False, chunk_sites=512, block_sites=256)
"""


def test_vcf_build_memory_is_bounded(tmp_path):
    """The bound for VCF files of many chunks (chunks of 512 sites, blocks of 256 records).

    Bound: per haplotype 1.5 bytes per pending site (a commit takes 8 chunks of 512 here) and 16 per
    site of a block, plus 20 MB of codec and reader buffers (the reader thread's stack and allocator
    arena, htslib's BGZF thread, a prepared commit waiting for the one being compressed):
    2000 * (1.5 * 4096 + 16 * 256) bytes + 20 MB = 40.5 MB, under the larger panel's own 48 MB as
    uint8; and 4x the sites must not raise the peak by more than noise.
    """
    from vcfstore.simulate import simulate_panel
    from vcfstore.store.builder import commit_chunks

    ts = simulate_panel(1000, 6e6, seed=4)
    genotypes = ts.genotype_matrix()
    bound = 2000 * (1.5 * 512 * commit_chunks(2000, 512) + 16 * 256) + 20e6
    grew = {}
    for n_sites in (6_000, 24_000):
        alleles = genotypes[:n_sites].T.astype("uint8")
        positions = ts.tables.sites.position[:n_sites].astype("int64") + 1
        vcf = vcf_from_arrays(tmp_path / f"p{n_sites}.vcf.gz", alleles, positions)
        run = run_measured([sys.executable, "-c", MEASURE_VCF, str(vcf), str(tmp_path / f"s{n_sites}")], interval=0.002)
        assert run.returncode == 0, run.stderr
        grew[n_sites] = run.peak_anon - int(run.stdout.split()[0])
        assert grew[n_sites] < bound, f"{n_sites} sites: grew {grew[n_sites] / 1e6:.1f} MB"
        assert vs.open_store(tmp_path / f"s{n_sites}").n_sites == n_sites
    # 4x the sites add 36 MB of alleles (as uint8) but not to the peak: less than 10 MB apart (the
    # smaller build's peak varies by a few MB with how its fewer commits overlap the reading)
    assert alleles.nbytes > bound and grew[24_000] - grew[6_000] < 10e6, grew


def test_room_made_for_announced_records_is_trimmed(tmp_path, sim_arrays):
    """The arrays are made with room for the records a source announces (no resize while building):
    an announcement too large, too small or absent gives the same store, trimmed to the sites."""
    import zarr

    alleles, positions = sim_arrays
    alleles, positions = alleles[:, :3000], positions[:3000]
    stores = []
    for announced in (None, 10, 3000, 100_000):
        source = vs.ArraySource(alleles, positions)
        source.expected_records = lambda n=announced: n  # type: ignore[method-assign]
        out = tmp_path / f"s{announced}"
        stores.append(vs.build_store(source, out, progress=False, chunk_sites=512))
        root = zarr.open_group(str(out), mode="r")
        assert root["alleles"].shape == (alleles.shape[0], 3000 // 8)
        assert all(root[f"sites/{name}"].shape == (3000,) for name in ("position", "af", "id", "ref", "alt"))
    for store in stores[1:]:
        np.testing.assert_array_equal(store.read_alleles(0, 3000), stores[0].read_alleles(0, 3000))
        for name, column in stores[0].site_table().items():
            np.testing.assert_array_equal(store.site_table()[name], column)
