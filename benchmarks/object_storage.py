"""Window reads from object storage against a local store, and why vcfstore reads S3 through fsspec.

Run ``python -m benchmarks.object_storage`` (``--quick`` for a smoke run). One simulated panel
is built to an S3 server on 127.0.0.1 (moto in server mode, started and stopped here), keeping
its local staging copy, so both stores hold the same bytes. Per window (all haplotypes, as the
window cache reads it), the median and 90th percentile latency, over every window and five
repetitions, the readers interleaved window by window, of:

* the local store;
* the S3 store with the chunk cache off (every read goes to the server);
* the S3 store with the chunk cache on: first pass (cold) and second pass (warm);
* plain Zarr (no checksum checks) over fsspec's S3 filesystem and over obstore, side by side;

and whether a forked worker can read after its parent has read, with each client. The server is
a local process, so these latencies are loopback plus moto's request handling: a real S3 region
adds its own first-byte latency (typically tens of milliseconds) to every uncached read.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr

import vcfstore as vs
from vcfstore.simulate import TreeSequenceSource, simulate_panel
from vcfstore.testing import LocalS3Server

from .common import write_result

BUCKET = "bench"


def _summary(times: list[float]) -> dict[str, float]:
    """Median and 90th percentile (ms) of per-window read times (s)."""
    ms = sorted(t * 1e3 for t in times)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[min(len(ms) - 1, int(0.9 * len(ms)))], "reads": len(ms)}


def _timed(read: Callable[[int], object], w: int) -> float:
    t = time.perf_counter()
    read(w)
    return time.perf_counter() - t


def interleaved(readers: dict[str, Callable[[int], object]], windows: list[int], offset: int) -> dict[str, list[float]]:
    """One read of each window by every reader, the readers' order rotating from window to window.

    Interleaving spreads a busy machine's noise over every reader alike, instead of charging it
    to whichever ran while the machine was busy.
    """
    names, times = list(readers), {name: [] for name in readers}
    for i, w in enumerate(windows):
        k = (i + offset) % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_timed(readers[name], w))
    return times


def _column_slices(store: vs.PanelStore, windows: list[int]) -> dict[int, slice]:
    out = {}
    for w in windows:
        sites = store.window_sites(w)
        out[w] = slice(sites.start // 8, (sites.stop + 7) // 8)
    return out


def _obstore_array(server: LocalS3Server, prefix: str) -> Any:
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    s3 = S3Store(
        BUCKET,
        prefix=prefix,
        endpoint=server.endpoint,
        access_key_id=server.key,
        secret_access_key=server.secret,
        region="us-east-1",
        client_options={"allow_http": True},
    )
    return zarr.open_group(ObjectStore(s3, read_only=True), mode="r")["alleles"]


def _fsspec_array(server: LocalS3Server, prefix: str) -> Any:
    from zarr.storage import FsspecStore

    store = FsspecStore.from_url(f"s3://{BUCKET}/{prefix}", storage_options=server.storage_options(), read_only=True)
    return zarr.open_group(store, mode="r")["alleles"]


_OPENERS = {"fsspec": _fsspec_array, "obstore": _obstore_array}


def _child_read(client: str, server: LocalS3Server, prefix: str, done: Any) -> None:
    done.put(int(_OPENERS[client](server, prefix)[:, :4].sum()))


def fork_after_parent_read(client: str, server: LocalS3Server, prefix: str, timeout: float) -> str:
    """ "ok" if a forked child (opening its own client) reads after the parent has read, else "hang"."""
    _OPENERS[client](server, prefix)[:, :4].sum()  # the parent's client is live now
    ctx = mp.get_context("fork")
    done = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(client, server, prefix, done))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return f"hang (no read in {timeout:.0f} s)"
    return "ok" if child.exitcode == 0 and not done.empty() else f"failed (exit code {child.exitcode})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small panel (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    # Nothing but the local server: no AWS configuration files, no instance metadata service.
    os.environ.update(
        AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull
    )
    n_samples, length, hang_timeout, reps = (100, 1e6, 3.0, 1) if args.quick else (1004, 10e6, 20.0, 5)
    with (
        tempfile.TemporaryDirectory(prefix="vcfstore-s3-", dir=os.environ.get("TMPDIR")) as tmp,
        LocalS3Server() as server,
    ):
        server.create_bucket(BUCKET)
        opts = server.storage_options()
        source = TreeSequenceSource(simulate_panel(n_samples, length, seed=42))
        local_path = Path(tmp) / "panel.vcfstore"
        t = time.perf_counter()
        url = f"s3://{BUCKET}/panel"
        remote = vs.build_store(source, url, storage_options=opts, staging=local_path, progress=False)
        build_s = time.perf_counter() - t
        local = vs.open_store(local_path)
        windows = list(range(local.n_windows))
        uncached = vs.open_store(remote.path, storage_options=opts, chunk_cache=0)
        cols = _column_slices(local, windows)
        readers: dict[str, Callable[[int], object]] = {
            "local": local.window_alleles,
            "s3_uncached": uncached.window_alleles,
        }
        clients: dict[str, Any] = {}
        for client, opener in _OPENERS.items():
            try:
                arr = opener(server, "panel")
            except ImportError as e:
                clients[client] = {"skipped": str(e)}
                continue
            readers[f"plain_zarr_{client}"] = lambda w, a=arr: a[:, cols[w]]
            clients[client] = {"fork_after_parent_read": fork_after_parent_read(client, server, "panel", hang_timeout)}
        for read in readers.values():
            read(0)  # first opens (metadata, checksum record) outside the timings
        passes = ("s3_cached_first_pass", "s3_cached_second_pass")  # an empty chunk cache, then a warm one
        times: dict[str, list[float]] = {name: [] for name in [*readers, *passes]}
        for rep in range(reps):
            cached = vs.open_store(remote.path, storage_options=opts)  # a fresh, empty chunk cache
            cached.root  # noqa: B018 - opened (metadata, checksum record) outside the timings
            for pass_name in passes:
                for name, got in interleaved({**readers, pass_name: cached.window_alleles}, windows, rep).items():
                    times[name] += got
        cache = cached.root.store._store.cache
        reads = {name: _summary(t) for name, t in times.items()}
        store_bytes = sum(local.disk_usage().values())
    result = {
        "panel": {"haplotypes": local.n_haplotypes, "sites": local.n_sites, "windows": local.n_windows},
        "store_bytes": store_bytes,
        "build_and_upload_s": build_s,
        "window_reads": reads,
        "chunk_cache": {"entries": len(cache), "bytes": cache.usage()["anon"], "hits": cache.hits},
        "fork_after_parent_read_by_client": clients,
        "load_average_1min_after": os.getloadavg()[0],
    }
    path = write_result("object_storage_quick" if args.quick else "object_storage", result, args.out)
    print(f"panel of {local.n_haplotypes} haplotypes x {local.n_sites} sites, {local.n_windows} windows")
    print("| window read (all haplotypes) | median ms | p90 ms |\n| --- | ---: | ---: |")
    for name, r in reads.items():
        print(f"| {name} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} |")
    for name, r in clients.items():
        print(f"forked worker reading after its parent, {name}: {r.get('fork_after_parent_read', r.get('skipped'))}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
