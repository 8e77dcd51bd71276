"""What integrity checks cost: verified store reads against plain Zarr reads, and index verification.

Run ``python -m benchmarks.integrity`` (``--quick`` for a smoke run). Store reads are timed side
by side in one run on the same store: through vcfstore's :class:`VerifyingStore` (every file read
is checked against its SHA-256) and through plain Zarr on the same files (no checks). The index
figure is the whole-file SHA-256 an :class:`IndexSet` computes the first time a process opens a
window, on a file of the size of one flat window at D = 192 (2008 x 1030 x 192 float32).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

import vcfstore as vs
from vcfstore._fileio import file_sha256
from vcfstore.simulate import TreeSequenceSource, simulate_panel
from vcfstore.testing import best_time

from .common import drop_page_cache, write_result

FLAT_WINDOW_BYTES = 2008 * 1030 * 192 * 4  # 1.59 GB


def store_reads(store: vs.PanelStore, repeat: int) -> dict[str, float]:
    """Best times (ms) of a whole-window read and a 16-row gather, verified and plain."""
    plain = zarr.open_group(str(store.path), mode="r")["alleles"]
    verified = store.root["alleles"]
    w = store.n_windows // 2
    sites = store.window_sites(w)
    cols = slice(sites.start // 8, (sites.stop + 7) // 8)
    rows = np.arange(0, store.n_haplotypes, store.n_haplotypes // 16)[:16]
    out = {}
    for name, arr in (("verified", verified), ("plain", plain)):
        out[f"window_{name}_ms"] = best_time(lambda a=arr: a[:, cols], repeat) * 1e3
        out[f"gather_{name}_ms"] = best_time(lambda a=arr: a.oindex[rows, cols], repeat) * 1e3
    out["window_ratio"] = out["window_verified_ms"] / out["window_plain_ms"]
    out["gather_ratio"] = out["gather_verified_ms"] / out["gather_plain_ms"]
    return out


def index_verification(nbytes: int, work: Path) -> dict[str, float]:
    """Seconds to SHA-256 a file of ``nbytes``: page cache warm, and cold (dropped first)."""
    path = work / "window.faiss"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for start in range(0, nbytes, 1 << 26):
            f.write(rng.integers(0, 256, min(1 << 26, nbytes - start), dtype=np.uint8).tobytes())
    file_sha256(path)
    t = time.perf_counter()
    file_sha256(path)
    warm = time.perf_counter() - t
    drop_page_cache(path)
    t = time.perf_counter()
    file_sha256(path)
    cold = time.perf_counter() - t
    path.unlink()
    return {"bytes": nbytes, "warm_s": warm, "cold_s": cold, "warm_gb_per_s": nbytes / warm / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small panel and file (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    n_samples, length, nbytes = (200, 1e6, 64 << 20) if args.quick else (1004, 10e6, FLAT_WINDOW_BYTES)
    with tempfile.TemporaryDirectory(prefix="vcfstore-integrity-", dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        source = TreeSequenceSource(simulate_panel(n_samples, length, seed=42))
        store = vs.build_store(source, work / "panel.vcfstore", progress=False)
        reads = store_reads(store, repeat=5 if args.quick else 30)
        index = index_verification(nbytes, work)
    result = {
        "panel": {"haplotypes": store.n_haplotypes, "sites": store.n_sites},
        "store_reads": reads,
        "index_first_open": index,
    }
    name = "integrity_quick" if args.quick else "integrity"
    path = write_result(name, result, args.out)
    print(f"store of {store.n_haplotypes} haplotypes x {store.n_sites} sites (best of runs, ms):")
    print("| read | verified | plain Zarr | ratio |\n| --- | ---: | ---: | ---: |")
    for what in ("window", "gather"):
        v, p, r = reads[f"{what}_verified_ms"], reads[f"{what}_plain_ms"], reads[f"{what}_ratio"]
        print(f"| {what} | {v:.3f} | {p:.3f} | {r:.2f}x |")
    print(
        f"index first open, SHA-256 of {index['bytes'] / 1e9:.2f} GB: {index['warm_s']:.2f} s warm "
        f"({index['warm_gb_per_s']:.2f} GB/s), {index['cold_s']:.2f} s cold"
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
