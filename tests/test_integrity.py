"""Fault injection on stores: nothing damaged reads as data; one writer at a time; kills resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vcfstore as vs
from vcfstore.store.integrity import CHECKSUMS

ARRAYS = ["alleles", "sites/position", "sites/contig", "sites/af", "sites/id", "sites/ref", "sites/alt", "windows"]


@pytest.fixture(scope="module")
def pristine(sim_arrays, tmp_path_factory) -> Path:
    alleles, positions = sim_arrays
    # 64-site chunks: every array has several chunks to delete, flip and swap.
    out = tmp_path_factory.mktemp("pristine") / "s"
    vs.build_from_arrays(alleles, positions, out, window_size=300, chunk_sites=64)
    return out


@pytest.fixture
def small_store(pristine, tmp_path) -> vs.PanelStore:
    shutil.copytree(pristine, tmp_path / "s")
    return vs.open_store(tmp_path / "s")


def _chunks(store: vs.PanelStore, array: str) -> list[Path]:
    return sorted((store.path / array / "c").rglob("*"), key=str)


def _read_everything(path: Path) -> None:
    """What a user reads: every window's alleles, tokens and AF, the positions and the site table."""
    store = vs.open_store(path)
    for w in range(store.n_windows):
        store.window_alleles(w)
        store.window_af(w)
    store.site_table()
    _ = store.samples


@pytest.mark.parametrize("array", ARRAYS)
@pytest.mark.parametrize("fault", ["delete", "truncate", "flip", "swap"])
def test_damaged_chunks_raise_naming_store_array_and_chunk(small_store, array, fault):
    chunks = [p for p in _chunks(small_store, array) if p.is_file()]
    victim = chunks[len(chunks) // 2]
    data = victim.read_bytes()
    if fault == "delete":
        victim.unlink()
    elif fault == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif fault == "flip":
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))
    else:
        if len(chunks) < 2:
            pytest.skip(f"{array} has one chunk")
        other = chunks[0] if victim != chunks[0] else chunks[-1]
        a, b = victim.read_bytes(), other.read_bytes()
        if a == b:
            pytest.skip("identical chunks: a swap changes nothing")
        victim.write_bytes(b)
        other.write_bytes(a)
    with pytest.raises(vs.StoreError) as err:
        _read_everything(small_store.path)
    message = str(err.value)
    assert str(small_store.path) in message and f"array {array}" in message and "chunk (" in message
    problems = vs.open_store(small_store.path).verify()
    assert problems and any(f"array {array}" in p for p in problems)


def test_intact_store_verifies_and_reads(small_store, sim_arrays):
    assert small_store.verify() == []
    alleles, _ = sim_arrays
    np.testing.assert_array_equal(small_store.read_alleles(0, small_store.n_sites), alleles)


def test_foreign_or_missing_checksum_record(small_store):
    (small_store.path / "alleles" / "c" / "0" / "999").write_bytes(b"x")
    assert any("foreign" in p for p in small_store.verify())
    (small_store.path / CHECKSUMS).write_text("{broken")
    with pytest.raises(vs.StoreError, match=r"checksums\.json is damaged"):
        _read_everything(small_store.path)
    (small_store.path / CHECKSUMS).unlink()
    with pytest.raises(vs.StoreError, match=r"has no checksums\.json"):
        _read_everything(small_store.path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_sites", None, "'n_sites' is missing or has the wrong type"),
        ("n_haplotypes", "200", "'n_haplotypes' is missing or has the wrong type"),
        ("vocab", {"pad": 0, "bogus": 1}, "'vocab' or 'contig_runs' is damaged"),
        ("contig_runs", [], "disagree"),
        ("n_windows", 10**6, "array windows has shape"),
    ],
)
def test_damaged_metadata_is_one_line(small_store, key, value, message):
    meta_file = small_store.path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    if value is None:
        del meta["attributes"]["vcfstore"][key]
    else:
        meta["attributes"]["vcfstore"][key] = value
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(vs.StoreError, match=message) as err:
        _read_everything(small_store.path)
    assert "\n" not in str(err.value)


def test_second_writer_is_refused_while_the_first_runs(sim_arrays, tmp_path):
    alleles, positions = sim_arrays
    out = tmp_path / "s"
    lock = tmp_path / ".s.lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "started": time.time(), "what": "x"}))
    with pytest.raises(vs.StoreError, match=rf"is being written by another process \(pid {os.getpid()}"):
        vs.build_from_arrays(alleles, positions, out)
    assert not out.exists()
    # A lock left by a dead process is taken over.
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 12345, "started": 0.0, "what": "x"}))
    vs.build_from_arrays(alleles, positions, out)
    assert not lock.exists() and vs.open_store(out).verify() == []


_BUILD = """
import sys, numpy as np, vcfstore as vs
from vcfstore.simulate import simulate_panel
ts = simulate_panel(100, 1_000_000, seed=7)
a = ts.genotype_matrix().T.astype(np.uint8)
p = ts.tables.sites.position.astype(np.int64) + 1
vs.build_from_arrays(a, p, sys.argv[1], window_size=300, chunk_sites=64, block_sites=64)
"""


@pytest.mark.slow
def test_concurrent_builds_into_one_directory(tmp_path):
    """Two builds at once into one store: one finishes, the other is refused naming the holder."""
    out = tmp_path / "s"
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUILD, str(out)], stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    assert "is being written by another process" in next(err for code, err in results if code)
    assert vs.open_store(out).verify() == []


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_identical(sim_arrays, tmp_path):
    alleles, positions = sim_arrays
    ref = vs.build_from_arrays(alleles, positions, tmp_path / "ref", window_size=300, chunk_sites=64, block_sites=64)
    rng = np.random.default_rng(2026)
    resumed = 0
    for i, delay in enumerate(rng.uniform(0.0, 0.5, size=3)):
        out = tmp_path / f"k{i}"
        proc = subprocess.Popen([sys.executable, "-c", _BUILD, str(out)])
        _wait_for_progress(out, proc)  # killed mid-build: after some chunks are committed, at a random moment
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            vs.open_store(out)  # the kill came after the build finished: nothing to resume
        except vs.StoreError:
            resumed += 1
            subprocess.run([sys.executable, "-c", _BUILD, str(out)], check=True, timeout=120)
        store = vs.open_store(out)
        assert store.verify() == []
        np.testing.assert_array_equal(store.read_alleles(0, store.n_sites), ref.read_alleles(0, ref.n_sites))
        np.testing.assert_array_equal(store.af, ref.af)
        shutil.rmtree(out)
    assert resumed >= 2  # else the kills landed after the builds and nothing was tested


def _wait_for_progress(out: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((out / "zarr.json").read_text())["attributes"]["vcfstore_build"]["sites"] > 0:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)


def test_cli_verify_and_info_report_damage(small_store):
    from click.testing import CliRunner

    from vcfstore.app.cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["verify", str(small_store.path)])
    assert ok.exit_code == 0 and "intact" in ok.output
    victim = next(p for p in _chunks(small_store, "alleles") if p.is_file())
    victim.write_bytes(victim.read_bytes()[:-3])
    bad = runner.invoke(main, ["verify", str(small_store.path)])
    assert bad.exit_code == 1 and "array alleles, chunk (" in bad.output and "damaged part" in bad.output
    info = runner.invoke(main, ["info", str(small_store.path)])
    assert "DAMAGED" in info.output
