"""Fault injection on index sets: damaged bodies never answer, builds repair, writers merge, leftovers go."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vcfstore as vs
from vcfstore.index import IndexSet, IndexSetError
from vcfstore.retrieval.layers import PositionwiseEmbedding


def _layer(d: int = 64) -> PositionwiseEmbedding:
    torch.manual_seed(0)
    return PositionwiseEmbedding(d_model=d)  # d = 64: 66 KB a row, files well past the 64 KiB header


@pytest.fixture
def built(sim_store, tmp_path):
    masks = vs.MaskSchedule(3).at(sim_store, epoch=0, rate=0.4)
    iset = IndexSet.build(sim_store, _layer(), tmp_path / "ix", masks, windows=[0, 1], progress=False)
    return iset, masks


def _corrupt_body(path: Path) -> None:
    """Flip one byte well past the first 64 KiB: same size, same header."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) * 3 // 4)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))


def test_corrupt_body_never_answers_and_a_rebuild_repairs_it(built, sim_store):
    iset, masks = built
    path = iset.directory / iset.entry(1).file
    assert path.stat().st_size > 4 * (1 << 16)
    _corrupt_body(path)
    fresh = IndexSet.open(iset.directory, sim_store)
    q = np.zeros((1, fresh.dim), np.float32)
    fresh.search(0, q, 1)  # an intact window still answers
    with pytest.raises(IndexSetError, match=r"window 1: index file w00001\.faiss is corrupt \(its checksum"):
        fresh.search(1, q, 1)
    assert fresh.verify() == [1]
    inode0 = (iset.directory / iset.entry(0).file).stat().st_ino
    repaired = IndexSet.build(sim_store, _layer(), iset.directory, masks, windows=[0, 1], progress=False)
    assert repaired.verify() == []
    assert (iset.directory / iset.entry(0).file).stat().st_ino == inode0  # the intact window was kept
    IndexSet.open(iset.directory, sim_store).search(1, q, 1)


def test_missing_file_is_rebuilt(built, sim_store):
    iset, masks = built
    (iset.directory / iset.entry(0).file).unlink()
    with pytest.raises(IndexSetError, match="missing"):
        IndexSet.open(iset.directory, sim_store).search(0, np.zeros((1, iset.dim), np.float32), 1)
    IndexSet.build(sim_store, _layer(), iset.directory, masks, windows=[0, 1], progress=False)
    assert IndexSet.open(iset.directory, sim_store).verify() == []


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda m: m.pop("store"), "key 'store' is missing"),
        (lambda m: m["windows"]["0"].pop("sha256"), "window 0 has no key 'sha256'"),
        (lambda m: m["windows"]["1"].update(size="big"), "window 1, key 'size' has the wrong type"),
        (lambda m: m["windows"].update(x={}), "window key 'x' is not a window number"),
        (lambda m: m.update(format_version=99), "index set format 99 is not supported"),
    ],
)
def test_damaged_manifest_is_one_line(built, sim_store, damage, message):
    iset, _ = built
    path = iset.directory / "manifest.json"
    manifest = json.loads(path.read_text())
    damage(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexSetError, match=message) as err:
        IndexSet.open(iset.directory, sim_store)
    assert "\n" not in str(err.value)


def test_leftover_temporary_files_of_dead_builds_are_removed(built, sim_store):
    iset, masks = built
    host = os.uname().nodename.split(".")[0]
    dead = iset.directory / f".w00002.faiss.{host}.{2**22 + 4321}.tmp"
    live = iset.directory / f".w00003.faiss.{host}.{os.getpid()}.tmp"
    dead.write_bytes(b"x" * 1000)
    live.write_bytes(b"y")
    IndexSet.build(sim_store, _layer(), iset.directory, masks, windows=[2], progress=False)
    assert not dead.exists() and live.exists()


def test_a_window_being_built_elsewhere_is_refused(built, sim_store):
    iset, masks = built
    lock = iset.directory / ".w00002.faiss.lock"
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "started": 0.0, "what": "x"}))
    with pytest.raises(IndexSetError, match="is being written by another process"):
        IndexSet.build(sim_store, _layer(), iset.directory, masks, windows=[2], progress=False)


_PART = """
import sys, torch, vcfstore as vs
from vcfstore.index import IndexSet
from vcfstore.retrieval.layers import PositionwiseEmbedding
torch.manual_seed(0)
layer = PositionwiseEmbedding(d_model=4)
store = vs.open_store(sys.argv[2])
windows = [int(w) for w in sys.argv[3].split(",")]
IndexSet.build(store, layer, sys.argv[1], vs.MaskSchedule(3).at(store, 0, 0.4), windows=windows, progress=False)
"""


@pytest.mark.slow
def test_disjoint_windows_from_several_processes_merge(sim_store, tmp_path):
    out = tmp_path / "ix"
    n = sim_store.n_windows
    shares = [",".join(str(w) for w in range(i, n, 3)) for i in range(3)]
    procs = [subprocess.Popen([sys.executable, "-c", _PART, str(out), str(sim_store.path), s]) for s in shares]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    merged = IndexSet.open(out, sim_store)
    assert sorted(merged.manifest.windows) == list(range(n)) and merged.verify() == []
    masks = vs.MaskSchedule(3).at(sim_store, 0, 0.4)
    serial = IndexSet.build(sim_store, _layer(4), tmp_path / "serial", masks, progress=False)
    assert [merged.entry(w).sha256 for w in range(n)] == [serial.entry(w).sha256 for w in range(n)]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 KB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_index_build_fails_cleanly_and_resumes(sim_store, small_tmpfs, monkeypatch):
    import vcfstore.index.index_set as index_set

    masks = vs.MaskSchedule(3).at(sim_store, 0, 0.4)
    out = small_tmpfs / "ix"
    with pytest.raises(IndexSetError, match=r"needs .* free in .*use backend='exact'"):  # refused up front
        IndexSet.build(sim_store, _layer(4), out, masks, progress=False)
    assert not out.exists() or not any(out.iterdir())
    # A disk that another writer fills during the build: the check passes, the writes fail.
    monkeypatch.setattr(index_set, "_check_room", lambda *args, **kwargs: None)
    import torch

    with pytest.raises(IndexSetError, match=r"writing the index set failed \(No space left on device\)") as err:
        IndexSet.build(sim_store, _layer(4), out, masks, progress=False)
    assert torch.is_grad_enabled()  # the failed build left the caller's gradients on (its generator kept no_grad)
    assert "\n" not in str(err.value) and not list(out.glob(".*.tmp"))
    done = IndexSet.open(out, sim_store).manifest.windows if (out / "manifest.json").exists() else {}
    assert len(done) < sim_store.n_windows
    subprocess.run(["mount", "-o", "remount,size=100m", str(small_tmpfs)], check=True)
    resumed = IndexSet.build(sim_store, _layer(4), out, masks, progress=False)
    assert resumed.verify() == [] and sorted(resumed.manifest.windows) == list(range(sim_store.n_windows))


_SLOW_BUILD = """
import sys, time, torch, vcfstore as vs
from vcfstore.index import IndexSet
from vcfstore.retrieval.layers import PositionwiseEmbedding
torch.manual_seed(0)
inner = PositionwiseEmbedding(d_model=4)
class Slow(torch.nn.Module):  # the same state dict as `inner`, a little slower per batch
    def __init__(self):
        super().__init__()
        self.inner = inner
    def forward(self, tokens, af=None):
        time.sleep(0.02)
        return self.inner(tokens, af=af)
store = vs.open_store(sys.argv[2])
IndexSet.build(store, Slow(), sys.argv[1], vs.MaskSchedule(3).at(store, 0, 0.4), progress=False, batch_rows=32)
"""


@pytest.mark.slow
def test_kill_9_index_builds_at_random_points_then_resume_is_identical(sim_store, tmp_path):
    import signal
    import time

    masks = vs.MaskSchedule(3).at(sim_store, 0, 0.4)
    uninterrupted = IndexSet.build(sim_store, _layer(4), tmp_path / "fresh", masks, progress=False)
    fresh = [uninterrupted.entry(w).sha256 for w in range(sim_store.n_windows)]
    rng = np.random.default_rng(7)
    for i, windows_done in enumerate(rng.integers(1, sim_store.n_windows - 1, size=2)):
        out = tmp_path / f"k{i}"
        proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(out), str(sim_store.path)])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # kill mid-build, after some windows
            try:
                if len(json.loads((out / "manifest.json").read_text())["windows"]) >= windows_done:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run([sys.executable, "-c", _SLOW_BUILD, str(out), str(sim_store.path)], check=True, timeout=300)
        resumed = IndexSet.open(out, sim_store)
        assert resumed.verify() == [] and not list(out.glob(".*.tmp"))
        digests = [resumed.entry(w).sha256 for w in range(sim_store.n_windows)]
        assert digests == fresh  # every kill point ends in the files of an uninterrupted build
