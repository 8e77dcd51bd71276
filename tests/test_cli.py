"""The command line: build, info, demo; one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from vcfstore.app.cli import main
from vcfstore.store import STORE_FORMAT_VERSION


def test_build_and_info(tmp_path, real_data):
    runner = CliRunner()
    out = tmp_path / "ref.vcfstore"
    r = runner.invoke(
        main,
        ["build", str(real_data / "reference.vcf.gz"), str(out), "--window-size", "500", "--overlap", "50", "--quiet"],
    )
    assert r.exit_code == 0, r.output
    assert "bits per genotype" in r.output
    r = runner.invoke(main, ["info", str(out), "--json"])
    info = json.loads(r.output)
    assert info["n_haplotypes"] == 600 and info["n_sites"] == 23670 and info["window_sites"]["max"] == 500
    assert info["bytes_on_disk"]["alleles"] > 0 and info["format_version"] == STORE_FORMAT_VERSION
    r = runner.invoke(main, ["build", str(real_data / "reference.vcf.gz"), str(out), "--quiet"])
    assert r.exit_code == 1 and "holds a finished store" in r.output


def test_windows_csv_option(tmp_path, real_data):
    csv = tmp_path / "segments_chr20.csv"
    csv.write_text("start,end\n0,1000\n1000,1028\n")
    r = CliRunner().invoke(
        main, ["build", str(real_data / "reference.vcf.gz"), str(tmp_path / "s"), "--windows", str(csv), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(CliRunner().invoke(main, ["info", str(tmp_path / "s"), "--json"]).output)["n_windows"] == 2


def test_zstd_level_option(tmp_path, real_data):
    """--zstd-level sets the allele chunks' level (recorded with the build); the alleles read the same."""
    import numpy as np

    import vcfstore as vs

    stores = {}
    for level in ("3", "15"):
        out = tmp_path / f"z{level}"
        argv = ["build", str(real_data / "reference.vcf.gz"), str(out), "--zstd-level", level, "--quiet"]
        assert CliRunner().invoke(main, argv).exit_code == 0
        stores[level] = vs.open_store(out)
        assert stores[level].meta["params"]["zstd_level"] == int(level)
    assert stores["15"].disk_usage()["alleles"] < 0.7 * stores["3"].disk_usage()["alleles"]
    np.testing.assert_array_equal(stores["15"].read_alleles(0, 5000), stores["3"].read_alleles(0, 5000))
    r = CliRunner().invoke(
        main, ["build", str(real_data / "reference.vcf.gz"), str(tmp_path / "z"), "--zstd-level", "0"]
    )
    assert r.exit_code == 2 and "--zstd-level" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "/nonexistent/store"], "no such store"),
        (["build", "{unphased}", "{out}", "--quiet"], "unphased heterozygous genotypes"),
        (["build", "{junk}", "{out}"], "not a readable VCF/BCF file"),
        (["build", "{ref}", "{out}", "--window-size", "2000"], "does not fit max_seq_len=1030"),
    ],
)
def test_user_errors_are_one_line(tmp_path, real_data, args, message):
    junk = tmp_path / "junk.vcf"
    junk.write_text("no\n")
    subs = {
        "unphased": real_data / "unphased.vcf.gz",
        "ref": real_data / "reference.vcf.gz",
        "junk": junk,
        "out": tmp_path / "o",
    }
    argv = [a.format(**{k: str(v) for k, v in subs.items()}) for a in args]
    r = subprocess.run([sys.executable, "-m", "vcfstore", *argv], capture_output=True, text=True)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("Error:")], r.stderr


def test_help_lists_commands():
    r = CliRunner().invoke(main, ["--help"])
    assert all(c in r.output for c in ("build", "info", "demo"))
    r = CliRunner().invoke(main, ["build", "--help"])
    assert "--af-from" in r.output and "--region" in r.output and "--windows" in r.output


@pytest.mark.slow
def test_demo_small(tmp_path):
    r = CliRunner().invoke(
        main, ["demo", "--samples", "60", "--length", "1e6", "--out", str(tmp_path / "d"), "--train-steps", "12"]
    )
    assert r.exit_code == 0, r.output
    assert "demo finished" in r.output and (tmp_path / "d" / "zarr.json").exists()
    for step in ("4. retrieval under a memory budget", "requires_grad=True", "5. training", "masked-site accuracy"):
        assert step in r.output


def test_demo_on_vcf(real_data, tmp_path):
    args = ["demo", "--vcf", str(real_data / "reference.vcf.gz"), "--out", str(tmp_path / "d"), "--train-steps", "0"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "600" in r.output
