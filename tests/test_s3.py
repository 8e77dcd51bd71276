"""Stores on object storage, against a real S3 server (moto in server mode) on 127.0.0.1.

The server is started by the fixture and stopped at teardown; nothing else is contacted (the
AWS configuration files and the instance metadata service are switched off for the session).
Every read is compared with the simulated arrays the store was built from, or with the same
computation on the local copy of the store.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import vcfstore as vs
from tests.conftest import BUCKET
from vcfstore.memory.meters import MemorySample
from vcfstore.testing import LocalS3Server

URL = f"s3://{BUCKET}/sim.vcfstore"


@pytest.fixture(scope="module")
def remote(s3, sim_arrays, tmp_path_factory) -> vs.PanelStore:
    alleles, positions = sim_arrays
    staging = tmp_path_factory.mktemp("staging") / "sim"
    store = vs.build_from_arrays(
        alleles, positions, URL, window_size=300, storage_options=s3.storage_options(), staging=staging
    )
    assert staging.is_dir()  # a given staging directory is kept
    return store


def _truth(sim_arrays, store, w):
    sites = store.window_sites(w)
    return sim_arrays[0][:, sites.start : sites.stop]


def test_build_open_read_and_verify(remote, s3, sim_arrays, sim_store):
    store = vs.open_store(URL, storage_options=s3.storage_options())
    assert isinstance(store.path, str) and store.path == URL
    assert store.identity == sim_store.identity and store.n_windows == sim_store.n_windows
    for w in range(store.n_windows):
        assert np.array_equal(store.window_alleles(w), _truth(sim_arrays, store, w))
    rows = np.array([5, 3, 3, 150])
    assert np.array_equal(store.window_tokens(2, rows=rows), sim_store.window_tokens(2, rows=rows))
    assert store.verify() == [] and store.verify(sizes_only=True) == []
    info = store.info()
    assert info["damage_seen_without_reading"] == [] and info["bytes_on_disk"]["alleles"] > 0
    assert info["bytes_on_disk"]["alleles"] == sim_store.info()["bytes_on_disk"]["alleles"]
    with pytest.raises(vs.StoreError, match="holds a finished store; pass force=True"):
        vs.build_from_arrays(*sim_arrays, URL, window_size=300, storage_options=s3.storage_options())


def test_default_staging_is_removed_and_a_finished_staging_is_uploaded_again(s3, sim_arrays, tmp_path):
    url = f"s3://{BUCKET}/default-staging.vcfstore"
    store = vs.build_from_arrays(*sim_arrays, url, window_size=400, storage_options=s3.storage_options())
    assert store.verify() == []
    from vcfstore.store.remote import _staging_for

    assert not _staging_for(url).exists()
    # A finished staging build (as after a failed upload) is uploaded again, not rebuilt.
    staging = tmp_path / "kept"
    opts = s3.storage_options()
    vs.build_from_arrays(*sim_arrays, f"s3://{BUCKET}/a", window_size=400, storage_options=opts, staging=staging)
    before = {p: p.stat().st_mtime_ns for p in staging.rglob("*")}
    again = vs.build_from_arrays(
        *sim_arrays, f"s3://{BUCKET}/b", window_size=400, storage_options=s3.storage_options(), staging=staging
    )
    assert {p: p.stat().st_mtime_ns for p in staging.rglob("*")} == before
    assert again.verify() == [] and again.identity == store.identity


def test_interrupted_upload_is_replaced_and_foreign_objects_are_refused(s3, sim_arrays):
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options(), skip_instance_cache=True)
    fs.pipe(f"{BUCKET}/half/.vcfstore-upload", b"")
    fs.pipe(f"{BUCKET}/half/alleles/c/0/99", b"left over")
    opts = s3.storage_options()
    store = vs.build_from_arrays(*sim_arrays, f"s3://{BUCKET}/half", window_size=400, storage_options=opts)
    assert store.verify() == []  # the left-over object is gone (it would be reported as foreign)
    fs.pipe(f"{BUCKET}/foreign/data.csv", b"a,b\n")
    with pytest.raises(vs.StoreError, match="not a vcfstore store; refusing"):
        vs.build_from_arrays(
            *sim_arrays, f"s3://{BUCKET}/foreign", window_size=400, storage_options=s3.storage_options(), force=True
        )


def test_damaged_object_is_caught_through_the_store_layer(remote, s3, sim_arrays):
    import s3fs

    url = f"s3://{BUCKET}/damaged.vcfstore"
    vs.build_from_arrays(*sim_arrays, url, window_size=300, storage_options=s3.storage_options())
    fs = s3fs.S3FileSystem(**s3.storage_options(), skip_instance_cache=True)
    key = f"{BUCKET}/damaged.vcfstore/alleles/c/0/0"
    data = bytearray(fs.cat(key))
    data[len(data) // 2] ^= 0xFF
    fs.pipe(key, bytes(data))
    store = vs.open_store(url, storage_options=s3.storage_options())
    with pytest.raises(vs.StoreError, match=r"damaged\.vcfstore: array alleles, chunk \(0, 0\) is damaged"):
        store.window_alleles(0)
    assert len(store.verify()) == 1 and store.verify(sizes_only=True) == []


class _FakeMeter:
    def read(self) -> MemorySample:
        return MemorySample(anon=1 << 20, rss=1 << 20)


def test_chunk_cache_is_held_under_the_budget_and_its_ceiling(remote, s3, sim_arrays):
    budget = vs.MemoryBudget(10 << 20, meter=_FakeMeter())
    store = vs.open_store(URL, storage_options=s3.storage_options(), budget=budget, chunk_cache=8_000)
    for w in (0, 1, 0, 1):
        assert np.array_equal(store.window_alleles(w), _truth(sim_arrays, store, w))
    cache = store.chunk_cache_stats()
    assert cache is not None and cache["hits"] > 0 and 0 < cache["anon"] <= 8_000
    assert budget.held("anon") == cache["anon"]  # the budget sees the cache
    # A budget that cannot admit a chunk leaves it uncached; the read still succeeds.
    tight = vs.MemoryBudget(1 << 20, meter=_FakeMeter())
    store = vs.open_store(URL, storage_options=s3.storage_options(), budget=tight)
    assert np.array_equal(store.window_alleles(3), _truth(sim_arrays, store, 3))
    tight_cache = store.chunk_cache_stats()
    assert tight_cache is not None and tight_cache["anon"] == 0 and tight.stats.refused > 0


def _read(store: vs.PanelStore, w: int) -> int:
    return int(store.window_tokens(w, rows=np.arange(0, store.n_haplotypes, 3)).sum())


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_workers_read_after_the_parent(remote, s3, sim_store, method):
    store = vs.open_store(URL, storage_options=s3.storage_options())
    windows = [0, 4, 7, 10]
    expect = [_read(sim_store, w) for w in windows]
    assert _read(store, 0) == expect[0]  # the parent's client and event loop are live now
    with mp.get_context(method).Pool(1) as pool:
        got = pool.starmap_async(_read, [(store, w) for w in windows]).get(timeout=120)
    assert got == expect
    assert _read(store, 4) == expect[1]  # the parent still reads after its child


def test_dataloader_with_workers_and_a_retriever(remote, s3, sim_store):
    import torch
    from torch.utils.data import DataLoader

    from vcfstore.retrieval.layers import PositionwiseEmbedding

    schedule = vs.MaskSchedule(seed=3)
    budget = vs.MemoryBudget("2GB")
    remote_ds = vs.TargetDataset(vs.open_store(URL, storage_options=s3.storage_options(), budget=budget), schedule)
    local_ds = vs.TargetDataset(sim_store, schedule)
    batches = []
    for ds, workers in ((remote_ds, 2), (local_ds, 0)):
        sampler = vs.WindowGroupedBatchSampler.for_dataset(ds, batch_size=16, seed=5)
        loader = DataLoader(
            ds,
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=vs.collate,
            worker_init_fn=budget.worker_init_fn() if workers else None,
        )
        batches.append(list(itertools.islice(loader, 6)))
    assert len(batches[0]) == len(batches[1]) > 0
    for a, b in zip(*batches, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("hap_1", "hap_2", "label_1", "mask", "af", "sample_idx"))
    torch.manual_seed(0)
    layer = PositionwiseEmbedding(d_model=4).eval()
    out_remote = vs.Retriever(remote_ds.target, layer, k=3, backend="exact").augment(batches[0][0])
    out_local = vs.Retriever(sim_store, layer, k=3, backend="exact").augment(batches[1][0])
    assert torch.equal(out_remote["rag_idx_h1"], out_local["rag_idx_h1"])
    assert torch.equal(out_remote["rag_emb_h2"], out_local["rag_emb_h2"])


def test_missing_bucket_and_missing_store(s3, sim_arrays):
    opts = s3.storage_options()
    with pytest.raises(vs.StoreError, match="bucket 'nope' does not exist"):
        vs.open_store("s3://nope/panel.vcfstore", storage_options=opts)
    with pytest.raises(vs.StoreError, match="no vcfstore panel store there"):
        vs.open_store(f"s3://{BUCKET}/absent.vcfstore", storage_options=opts)
    t = time.monotonic()
    with pytest.raises(vs.StoreError, match="bucket 'nope' does not exist"):
        vs.build_from_arrays(*sim_arrays, "s3://nope/panel.vcfstore", storage_options=opts)
    assert time.monotonic() - t < 5  # refused before building
    with pytest.raises(vs.ArgumentError, match="storage_options is for stores on object storage"):
        vs.open_store(Path("/tmp/x"), storage_options=opts)


def test_wrong_credentials_are_one_clear_error(remote, s3, sim_arrays):
    t = time.monotonic()
    with pytest.raises(vs.StoreError, match=r"sim\.vcfstore: reading zarr\.json failed: access denied"):
        vs.open_store(URL, storage_options=s3.storage_options(secret="not-the-secret"))
    with pytest.raises(vs.StoreError, match="access denied"):
        vs.open_store(URL, storage_options=s3.storage_options(key="AKIAUNKNOWN", secret="x"))
    with pytest.raises(vs.StoreError, match="access denied"):  # refused before building
        vs.build_from_arrays(*sim_arrays, f"s3://{BUCKET}/new", storage_options=s3.storage_options(secret="x"))
    assert time.monotonic() - t < 10


def test_server_stopped_mid_read_is_a_clear_error_not_a_hang(sim_arrays):
    with LocalS3Server() as server:
        server.create_bucket("stop")
        vs.build_from_arrays(*sim_arrays, "s3://stop/s", window_size=300, storage_options=server.storage_options())
        store = vs.open_store("s3://stop/s", storage_options=server.storage_options(), chunk_cache=0)
        assert np.array_equal(store.window_alleles(0), _truth(sim_arrays, store, 0))
        server.stop()
        t = time.monotonic()
        with pytest.raises(vs.StoreError, match="the server cannot be reached"):
            store.window_alleles(4)
        assert time.monotonic() - t < 20


class _FlakyProxy:
    """A TCP proxy to the S3 server that drops (closes at once) the first ``drop`` connections."""

    def __init__(self, port: int, drop: int) -> None:
        self.target, self.drop, self.connections = port, drop, 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.drop:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                s.close()

    def close(self) -> None:
        self._listener.close()


@pytest.mark.parametrize("drop", [2, 1000])
def test_dropped_connections_are_retried_a_bounded_number_of_times(remote, s3, sim_arrays, drop):
    proxy = _FlakyProxy(s3.port, drop)
    try:
        opts = s3.storage_options(endpoint_url=f"http://127.0.0.1:{proxy.port}")
        if drop == 2:  # a transient failure: the retries get through
            store = vs.open_store(URL, storage_options=opts)
            assert np.array_equal(store.window_alleles(1), _truth(sim_arrays, store, 1))
        else:  # a persistent one: a clear error after a few attempts
            with pytest.raises(vs.StoreError, match=r"reading zarr\.json failed"):
                vs.open_store(URL, storage_options=opts)
            assert 3 <= proxy.connections <= 6  # 3 attempts (each may open 2 connections), then the error
    finally:
        proxy.close()


def test_sharded_pieces_are_read_checked_and_cached_over_s3(s3, sim_arrays):
    import s3fs

    alleles, positions = sim_arrays
    url = f"s3://{BUCKET}/sharded.vcfstore"
    opts = s3.storage_options()
    vs.build_from_arrays(
        alleles, positions, url, window_size=300, chunk_sites=256, haplotype_chunk=32, storage_options=opts
    )
    store = vs.open_store(url, storage_options=opts)
    rows = np.array([199, 3, 3, 70])  # inner chunks 6, 0 and 2 of 7: read piece by piece, not whole shards
    for _ in range(2):
        np.testing.assert_array_equal(store.read_alleles(256, 700, rows), alleles[rows, 256:700])
    cache = store.chunk_cache_stats()
    assert cache is not None and cache["hits"] > 0 and cache["entries"] > 0
    np.testing.assert_array_equal(store.window_alleles(1), _truth(sim_arrays, store, 1))
    # One damaged inner chunk on the server: caught where it is read, the others still serve.
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    key = f"{BUCKET}/sharded.vcfstore/alleles/c/0/1"
    data = bytearray(fs.cat(key))
    index = np.frombuffer(bytes(data[-(16 * 7 + 4) : -4]), "<u8").reshape(-1, 2)
    offset, nbytes = (int(x) for x in index[2])  # haplotypes 64..95
    data[offset + nbytes // 2] ^= 0x10
    fs.pipe(key, bytes(data))
    store = vs.open_store(url, storage_options=opts)
    np.testing.assert_array_equal(store.read_alleles(256, 512, rows[:2]), alleles[rows[:2], 256:512])
    with pytest.raises(
        vs.StoreError, match=r"sharded\.vcfstore: array alleles, chunk \(0, 1\), inner chunk 2 is damaged"
    ):
        store.read_alleles(256, 512, np.array([70]))
    with pytest.raises(vs.StoreError, match=r"array alleles, chunk \(0, 1\) is damaged"):
        store.read_alleles(256, 512)
