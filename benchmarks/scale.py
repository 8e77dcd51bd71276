"""Biobank-scale panels: stores of 2,000 to 1,000,000 haplotypes, and the exact search at that scale.

    python -m benchmarks.scale [--quick] [--sizes 2000,20000,200000,1000000] [--out DIR]
    python -m benchmarks.scale --gpu-only [--sizes ...]   # torch and numpy only: no store is built

Stores: for each N, msprime simulates N haplotypes plus 48 held out (the queries) over
``--length`` bases of one population (Ne 10,000, human-like rates), and a store is built
straight from the tree sequence, in a subprocess whose peak anonymous memory is sampled from
outside (:func:`vcfstore.testing.run_measured`) and set against
:func:`vcfstore.store.builder.build_memory_bound`. Reported: bits per genotype of the store, of
bio2zarr's VCF Zarr of the same tree sequence in its default layout (``tskit2zarr``, up to
``--vcf2zarr-max`` haplotypes) and of the tree sequence itself; the read time of a window (all
haplotypes, unpacked and packed) and of a 16-row gather, from both stores; and the layout
trade-off (inner chunk height against size and gather time) on the first shards.

Exact search: 48 masked queries (the held-out haplotypes, masked by :class:`MaskSchedule`)
against the N haplotypes of the middle window, read bit-packed (:class:`PackedAlleles`), K = 8,
VCF-Bert's layer (D = 192, position and AF terms), through the public
:class:`vcfstore.retrieval.ExactSearcher`: best time per batch
and peak anonymous memory, each N in its own measured subprocess; a log-log plot of time
against N.

``--synthetic-sizes``: the search alone (CPU, references read packed) on synthetic haplotypes of
those sizes, for sizes whose store takes too long to build on a small machine (plotted apart).

``--gpu-only``: the same search on synthetic haplotypes (mosaics of 64 founders with 0.5 %
noise, so that ties occur; read packed, as the window cache holds them), on CUDA and on the CPU,
timed on CUDA with the window's bits already on the GPU (as batch after batch of one window
finds them) and copied from the host first, and compared (:func:`compare`: equal indices,
and the same neighbours up to float32 rounding of the two devices' embeddings; the run fails
if the latter does not hold); it needs torch and numpy only (no zarr, numcodecs, msprime or
FAISS).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

N_QUERIES, K, D_MODEL, MASK_RATE = 48, 8, 192, 0.5
SIZES = (2_000, 20_000, 200_000, 1_000_000)
QUICK_SIZES = (200, 2_000)


# --- children (each runs in its own measured process) -----------------------------------------
def _child_build(args: dict[str, Any]) -> dict[str, Any]:
    import tskit

    import vcfstore as vs
    from vcfstore.memory.meters import StatmMeter

    ts = tskit.load(args["ts"])
    base = StatmMeter().read().anon  # the tree sequence and the modules: what the build adds comes on top
    t = time.perf_counter()
    source = vs.TreeSequenceSource(ts, nodes=np.arange(args["n"]))
    store = vs.build_store(source, args["out"], progress=False, force=True, **args["build"])
    return {"build_s": time.perf_counter() - t, "anon_before_build": base, "n_sites": store.n_sites}


def _child_search(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    from vcfstore.memory.meters import StatmMeter

    torch.set_num_threads(args.get("threads") or torch.get_num_threads())
    if args.get("synthetic"):
        n_sites = args["sites"]
        alleles, queries, af, max_seq_len, vocab = _synthetic(
            args["n"], n_sites, seed=args["seed"], packed=args.get("packed", False)
        )
        if args.get("packed"):
            alleles.bits.flags.writeable = False  # as the window cache holds it
    else:
        import vcfstore as vs
        from vcfstore.retrieval import PackedAlleles

        store = vs.open_store(args["store"])
        w = args["window"]
        # The search reads the window packed, as the store holds it: an eighth of its uint8 alleles.
        n_sites = len(store.window_sites(w))
        alleles = PackedAlleles(store.window_packed(w), n_sites)
        af, max_seq_len, vocab = store.window_af(w), store.max_seq_len, store.vocab
        queries = np.load(args["queries"])
    base = StatmMeter().read().anon
    out = {"window_bytes_unpacked": len(alleles) * n_sites, "window_bytes_packed": len(alleles) * -(-n_sites // 8)}
    for device in args["devices"]:
        out[device] = _time_search(alleles, queries, af, max_seq_len, vocab, device, args["repeat"])
    out["anon_before_search"] = base
    results = [out[d].pop("result") for d in args["devices"]]
    if len(results) == 2:
        out.update(compare(*results))
    return out


def compare(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], rtol: float = 1e-5) -> dict[str, Any]:
    """How two searches' (distances, indices) agree: exactly, and up to float32 rounding of the embeddings.

    Two devices embed in float32 with different kernels, so references whose distances differ only
    by that rounding (with VCF-Bert's layer, references at the same Hamming distance) may come in
    another order. ``neighbours_agree``: the distances agree to ``rtol`` of the K-th distance and
    every reference clearly nearer than the K-th (by more than that) is found by both.
    """
    (da, ia), (db, ib) = a, b
    tol = rtol * np.maximum(da[:, -1:], db[:, -1:])  # per row, relative to the K-th distance (others may be 0)
    distances = bool((np.abs(da - db) <= tol).all())
    clear = True
    for row in range(len(ia)):
        kth = max(da[row, -1], db[row, -1]) - tol[row, 0]
        clear &= set(ia[row][da[row] < kth]) == set(ib[row][db[row] < kth])
    return {
        "indices_agree": bool(np.array_equal(ia, ib)),
        "rows_differing": int((ia != ib).any(axis=1).sum()),
        "distances_agree": distances,
        "neighbours_agree": bool(distances and clear),
    }


def _time_search(
    alleles: Any, queries: np.ndarray, af: np.ndarray, max_seq_len: int, vocab: Any, device: str, repeat: int
) -> dict[str, Any]:
    import torch

    from vcfstore.retrieval import ExactSearcher, VcfBertEmbedding

    torch.manual_seed(0)
    layer = VcfBertEmbedding(D_MODEL, max_len=max_seq_len).to(device)
    searcher = ExactSearcher(layer, {"pos": True}, device=device)

    def once() -> tuple[np.ndarray, np.ndarray]:
        found = searcher.search(alleles, queries, K, max_seq_len=max_seq_len, vocab=vocab, ref_af=af)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return found

    t = time.perf_counter()
    found = once()  # the first call checks the layer is position-wise and warms the kernels
    first = time.perf_counter() - t
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    res = {"first_s": first, "best_s": min(times), "median_s": float(np.median(times)), "result": found}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name()
        res["gpu_peak_bytes"] = torch.cuda.max_memory_allocated()
        res["resident_bytes"] = searcher.resident.nbytes
        # best_s: the window's packed bits already on the GPU (the same window batch after batch);
        # with_transfer: copied from the host first, as for each new window
        cold = []
        for _ in range(repeat):
            searcher.resident.clear()
            t = time.perf_counter()
            once()
            cold.append(time.perf_counter() - t)
        res["with_transfer_best_s"] = min(cold)
    return res


def _synthetic(
    n: int, n_sites: int, *, seed: int, packed: bool = False
) -> tuple[Any, np.ndarray, np.ndarray, int, Any]:
    """Mosaic haplotypes: runs of about 100 sites copied from 64 founders, 0.5 % of alleles flipped.

    ``packed``: the references as :class:`PackedAlleles`, packed slice by slice (the same draws).
    """
    from vcfstore.retrieval import PackedAlleles
    from vcfstore.store.masks import MaskSchedule
    from vcfstore.store.vocab import Vocabulary, layout_tokens

    rng = np.random.default_rng(seed)
    founders = (rng.random((64, n_sites)) < rng.beta(0.3, 1.5, n_sites)).astype(np.uint8)
    runs = -(-n_sites // 100)

    def mosaic(m: int, pack: bool = False) -> np.ndarray:
        out = np.empty((m, -(-n_sites // 8) if pack else n_sites), dtype=np.uint8)
        for s in range(0, m, 65536):  # in slices: the temporaries stay small at a million rows
            k = min(65536, m - s)
            who = rng.integers(0, 64, (k, runs), dtype=np.int8).repeat(100, axis=1)[:, :n_sites]
            noise = rng.random((k, n_sites), dtype=np.float32) < 0.005
            rows = founders[who, np.arange(n_sites)] ^ noise
            out[s : s + k] = np.packbits(rows, axis=1) if pack else rows
        return out

    alleles, held = mosaic(n, packed), mosaic(N_QUERIES)
    head = alleles[: min(n, 20_000)]
    af = np.zeros(n_sites + 2, dtype=np.float32)
    af[1:-1] = (np.unpackbits(head, axis=1, count=n_sites) if packed else head).mean(axis=0)
    mask = np.zeros(n_sites + 2, dtype=bool)
    mask[1:-1] = MaskSchedule(1).site_mask(af[1:-1], 0, 0, MASK_RATE)
    vocab = Vocabulary()
    alleles = PackedAlleles(alleles, n_sites) if packed else alleles
    return alleles, layout_tokens(held, n_sites + 2, vocab, mask), af, n_sites + 2, vocab


def _run_child(kind: str, args: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Run a child of this module in a subprocess whose memory is sampled from outside."""
    from vcfstore.testing import run_measured

    argv = [sys.executable, "-m", "benchmarks.scale", "--child", kind, json.dumps(args)]
    run = run_measured(argv, interval=0.01, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"{kind} child failed ({run.returncode}): {run.stderr[-3000:]}")
    out = json.loads(run.stdout.strip().splitlines()[-1])
    out["peak_anon"] = run.peak_anon
    return out


# --- stores -------------------------------------------------------------------------------------
def simulate(n_hap: int, length: float, seed: int, path: Path) -> dict[str, Any]:
    from vcfstore.simulate import simulate_panel

    t = time.perf_counter()
    ts = simulate_panel(n_hap // 2 + N_QUERIES // 2, length, seed=seed)
    elapsed = time.perf_counter() - t
    ts.dump(path)
    return {"simulate_s": elapsed, "ts_file_bytes": path.stat().st_size, "ts_sites": ts.num_sites}


def vcf2zarr(ts_path: Path, n_hap: int, out: Path) -> dict[str, Any]:
    """bio2zarr's VCF Zarr of the panel's individuals, default layout (``tskit2zarr``)."""
    import tskit
    from bio2zarr import tskit as b2z

    from .common import dir_bytes

    ts = tskit.load(ts_path)
    mapping = ts.map_to_vcf_model(individuals=np.arange(n_hap // 2))
    t = time.perf_counter()
    b2z.convert(ts, str(out), model_mapping=mapping, worker_processes=0)
    return {"convert_s": time.perf_counter() - t, "call_genotype_bytes": dir_bytes(out / "call_genotype")}


def reads(store: Any, vcz: Path | None, repeat: int) -> dict[str, float]:
    """Best times (ms) of reading the middle window: all haplotypes, packed, and a 16-row gather."""
    from vcfstore.testing import best_time

    w = store.n_windows // 2
    sites = store.window_sites(w)
    rows = np.sort(np.random.default_rng(0).choice(store.n_haplotypes, 16, replace=False))
    out = {
        "vcfstore_window_ms": best_time(lambda: store.window_alleles(w), repeat) * 1e3,
        "vcfstore_window_packed_ms": best_time(lambda: store.window_packed(w), repeat) * 1e3,
        "vcfstore_gather16_ms": best_time(lambda: store.window_alleles(w, rows), repeat) * 1e3,
    }
    if vcz is not None:
        import zarr

        gt = zarr.open_group(str(vcz), mode="r")["call_genotype"]
        samples = np.unique(rows // 2)
        out["vcf2zarr_window_ms"] = best_time(lambda: gt[sites.start : sites.stop], repeat) * 1e3
        out["vcf2zarr_gather16_ms"] = best_time(lambda: gt.oindex[sites.start : sites.stop, samples], repeat) * 1e3
    return out


def layout_tradeoff(ts_path: Path, n_hap: int, heights: list[int], work: Path, repeat: int) -> list[dict[str, Any]]:
    """Inner chunk height against bits per genotype and read times, on the first 4 shards (8,192 sites)."""
    import tskit

    import vcfstore as vs
    from vcfstore.store.builder import inner_chunk_rows
    from vcfstore.testing import best_time

    ts = tskit.load(ts_path)
    n_sites = min(ts.num_sites, 8192)
    end = ts.sites_position[n_sites] if n_sites < ts.num_sites else ts.sequence_length
    part = ts.keep_intervals([[0, end]], simplify=False)
    rows = np.sort(np.random.default_rng(0).choice(n_hap, 16, replace=False))
    out = []
    for h in heights:
        source = vs.TreeSequenceSource(part, nodes=np.arange(n_hap))
        t = time.perf_counter()
        store = vs.build_store(source, work / f"layout{h}", haplotype_chunk=h, progress=False, force=True)
        build_s = time.perf_counter() - t
        w = min(1, store.n_windows - 1)
        out.append(
            {
                "haplotype_chunk": inner_chunk_rows(n_hap, h),
                "bits_per_genotype": store.disk_usage()["alleles"] * 8 / (n_hap * store.n_sites),
                "build_s": build_s,
                "window_ms": best_time(lambda s=store, w=w: s.window_alleles(w), repeat) * 1e3,
                "gather16_ms": best_time(lambda s=store, w=w: s.window_alleles(w, rows), repeat) * 1e3,
            }
        )
        vs.open_store(store.path)  # still opens
    return out


def queries_for(ts_path: Path, store: Any, w: int, n_hap: int) -> np.ndarray:
    """The held-out haplotypes at window ``w``'s sites, masked: int64 tokens [48, max_seq_len]."""
    import tskit

    from vcfstore.store.masks import MaskSchedule
    from vcfstore.store.vocab import layout_tokens

    ts = tskit.load(ts_path)
    sites = store.window_sites(w)
    held = np.arange(n_hap, n_hap + N_QUERIES)
    pos = ts.sites_position
    right = pos[sites.stop] if sites.stop < ts.num_sites else None
    g = np.array([v.genotypes for v in ts.variants(samples=held, left=pos[sites.start], right=right)], np.uint8)
    if g.shape != (len(sites), N_QUERIES):  # every site of the tree sequence is a site of the store
        raise RuntimeError(f"held-out genotypes have shape {g.shape}, expected ({len(sites)}, {N_QUERIES})")
    mask = MaskSchedule(1).window_mask(store, w, 0, MASK_RATE)
    return layout_tokens(g.T, store.max_seq_len, store.vocab, mask)


# --- the report ---------------------------------------------------------------------------------
def plot(result: dict[str, Any], path: Path) -> None:
    """Exact search time per batch against N, log-log, with a line of slope 1 through the first point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, rows, key in (
        ("CPU, msprime panels", result.get("search", []), "cpu"),
        ("CPU, synthetic", result.get("gpu", []), "cpu"),
        ("CUDA, synthetic", result.get("gpu", []), "cuda"),
        ("CPU, synthetic (no store built)", result.get("synthetic", []), "cpu"),
    ):
        pts = [(r["n"], r[key]["best_s"] * 1e3) for r in rows if key in r]
        if pts:
            n, ms = np.array(pts).T
            ax.plot(n, ms, "o-", label=label)
    rows = result.get("search", []) + result.get("gpu", []) + result.get("synthetic", [])
    ref = [(r["n"], r["cpu"]["best_s"] * 1e3) for r in rows if "cpu" in r]
    if ref:
        n0, t0 = min(ref)
        xs = np.array([n0, max(n for n, _ in ref)])
        ax.plot(xs, t0 * xs / n0, ":", color="grey", label="linear in N")
    ax.axhline(250, color="red", lw=0.8, ls="--", label="goal at 200k: 250 ms")
    ax.set(xscale="log", yscale="log", xlabel="reference haplotypes N", ylabel="ms per batch (48 queries, K=8)")
    ax.set_title(f"exact search, one window of 1028 sites\n{result['machine']['cpu']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"{title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def print_report(result: dict[str, Any]) -> None:
    stores = result.get("stores", [])
    if stores:
        rows = []
        for s in stores:
            v2z = s.get("vcf2zarr_bits")
            rows.append(
                [
                    f"{s['n']:,}",
                    f"{s['n_sites']:,}",
                    f"{s['vcfstore_bits']:.4f}",
                    "-" if v2z is None else f"{v2z:.4f}",
                    "-" if v2z is None else f"{s['vcfstore_bits'] / v2z:.2f}",
                    f"{s['tskit_bits']:.4f}",
                    f"{s['build']['build_s']:.0f}",
                    f"{s['build']['grew'] / 1e6:,.0f} / {s['build_bound'] / 1e6:,.0f}",
                ]
            )
        print(
            _table(
                "stores built from tree sequences (bits per genotype on disk)",
                ["N", "sites", "vcfstore", "vcf2zarr", "ratio", "tskit", "build s", "build adds / bound, MB"],
                rows,
            )
        )
        rows = []
        for s in stores:
            r = s["reads"]
            rows.append(
                [
                    f"{s['n']:,}",
                    f"{r['vcfstore_window_ms']:.2f}",
                    f"{r['vcfstore_window_packed_ms']:.2f}",
                    f"{r['vcfstore_gather16_ms']:.2f}",
                    "-" if "vcf2zarr_window_ms" not in r else f"{r['vcf2zarr_window_ms']:.2f}",
                    "-" if "vcf2zarr_gather16_ms" not in r else f"{r['vcf2zarr_gather16_ms']:.2f}",
                ]
            )
        hdr = ["N", "window", "window packed", "16-row gather", "vcf2zarr window", "vcf2zarr gather"]
        print(_table("\nread times of the middle window (best, ms)", hdr, rows))
    for t in result.get("layout", []):
        rows = [
            [
                str(r["haplotype_chunk"]),
                f"{r['bits_per_genotype']:.4f}",
                f"{r['window_ms']:.2f}",
                f"{r['gather16_ms']:.2f}",
                f"{r['build_s']:.1f}",
            ]
            for r in t["rows"]
        ]
        title = f"\nlayout at N = {t['n']:,}, first {t['sites']:,} sites: inner chunk height"
        print(_table(title, ["haplotypes per inner chunk", "bits/genotype", "window ms", "gather ms", "build s"], rows))
    for key, title in (
        ("search", "exact search, msprime panels"),
        ("gpu", "exact search, synthetic panels"),
        ("synthetic", "exact search, synthetic panels read packed, no store built"),
    ):
        rows = []
        for r in result.get(key, []):
            cells = [f"{r['n']:,}", f"{r['cpu']['best_s'] * 1e3:.1f}" if "cpu" in r else "-"]
            cuda = r.get("cuda", {})
            cells.append(f"{cuda['best_s'] * 1e3:.2f}" if cuda else "-")
            cells.append(f"{cuda['with_transfer_best_s'] * 1e3:.2f}" if "with_transfer_best_s" in cuda else "-")
            cells.append("-" if "indices_agree" not in r else f"{r['indices_agree']} / {r['neighbours_agree']}")
            cells.append(f"{r['peak_anon'] / 1e6:,.0f}")
            cells.append(f"{(r['peak_anon'] - r['anon_before_search']) / 1e6:,.0f}")
            cells.append(f"{r['window_bytes_packed'] / 1e6:,.1f} / {r['window_bytes_unpacked'] / 1e6:,.0f}")
            rows.append(cells)
        if rows:
            hdr = ["N", "CPU ms", "CUDA ms", "CUDA ms, window copied", "same indices / neighbours", "peak MB"]
            hdr.append("search MB")
            hdr.append("window MB packed / uint8")
            print(_table(f"\n{title} (48 queries, K = 8, best of runs)", hdr, rows))


# --- main ---------------------------------------------------------------------------------------
def run_stores(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import vcfstore as vs
    from vcfstore.store.builder import build_memory_bound

    from .common import write_result

    result: dict[str, Any] = {"stores": [], "search": [], "layout": []}
    for n in args.sizes:
        ts_path = work / f"panel{n}.trees"
        sim = simulate(n, args.length, args.seed, ts_path)
        print(f"N={n:,}: simulated {sim['ts_sites']:,} sites in {sim['simulate_s']:.0f} s", flush=True)
        out = work / f"panel{n}.vcfstore"
        build_args = {"block_sites": args.block_sites}
        build = _run_child("build", {"ts": str(ts_path), "n": n, "out": str(out), "build": build_args})
        store = vs.open_store(out)
        bound = build_memory_bound(n, block_sites=args.block_sites, source="tree-sequence")
        genotypes = n * store.n_sites
        row: dict[str, Any] = {
            "n": n,
            "n_sites": store.n_sites,
            "simulation": sim,
            "build": build,
            "build_bound": bound,
            "vcfstore_bits": store.disk_usage()["alleles"] * 8 / genotypes,
            "tskit_bits": sim["ts_file_bytes"] * 8 / ((n + N_QUERIES) * sim["ts_sites"]),
        }
        build["grew"] = build["peak_anon"] - build["anon_before_build"]
        grew, mb = build["grew"] / 1e6, bound / 1e6
        print(f"  built in {build['build_s']:.0f} s, +{grew:,.0f} MB (bound {mb:,.0f} MB)", flush=True)
        vcz = None
        if n <= args.vcf2zarr_max:
            vcz = work / f"panel{n}.vcz"
            conv = vcf2zarr(ts_path, n, vcz)
            row["vcf2zarr"] = conv
            row["vcf2zarr_bits"] = conv["call_genotype_bytes"] * 8 / genotypes
        row["reads"] = reads(store, vcz, args.repeat)
        result["stores"].append(row)
        if n in args.layout_sizes:
            layout = layout_tradeoff(ts_path, n, args.layout_heights, work, args.repeat)
            result["layout"].append({"n": n, "sites": min(8192, store.n_sites), "rows": layout})
        w = store.n_windows // 2
        q = work / f"queries{n}.npy"
        np.save(q, queries_for(ts_path, store, w, n))
        repeat = args.repeat if n < 200_000 else min(args.repeat, 3)  # seconds a run there, on 2 cores
        search = _run_child(
            "search",
            {"store": str(out), "window": w, "queries": str(q), "devices": ["cpu"], "repeat": repeat},
        )
        search["n"] = n
        result["search"].append(search)
        print(f"  exact search {search['cpu']['best_s'] * 1e3:.1f} ms, peak {search['peak_anon'] / 1e6:,.0f} MB")
        # What is measured so far, in case a later (larger) size does not finish.
        write_result(
            "scale_partial",
            {"benchmark": "scale", "sizes_done": args.sizes[: len(result["search"])], **result},
            args.out,
        )
        for p in (ts_path, q):
            p.unlink()
        for p in (out, vcz, *work.glob("layout*")):  # the disk holds one size at a time
            if p is not None:
                shutil.rmtree(p, ignore_errors=True)
    return result


def run_synthetic(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The exact search on the CPU for ``--synthetic-sizes``: sizes whose store would take too long to build here."""
    rows = []
    for n in args.synthetic_sizes:
        child = {"synthetic": True, "packed": True, "n": n, "sites": 1028, "seed": args.seed, "devices": ["cpu"]}
        child["repeat"] = min(args.repeat, 3)
        r = _run_child("search", child)
        r["n"] = n
        rows.append(r)
        ms, mb = r["cpu"]["best_s"] * 1e3, r["peak_anon"] / 1e6
        print(f"N={n:,} (synthetic): exact search {ms:.1f} ms, peak {mb:,.0f} MB", flush=True)
    return rows


def run_gpu(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("--gpu-only needs CUDA: torch.cuda.is_available() is False on this machine")
    rows = []
    for n in args.sizes:
        child = {"synthetic": True, "packed": True, "n": n, "sites": 1028, "seed": args.seed}
        child["devices"] = ["cuda", "cpu"]
        child["repeat"] = args.repeat if n < 200_000 else min(args.repeat, 2)  # the CPU's turn dominates there
        r = _run_child("search", child, timeout=600)
        r["n"] = n
        rows.append(r)
        print(
            f"N={n:,}: cuda {r['cuda']['best_s'] * 1e3:.2f} ms (window on the GPU; "
            f"{r['cuda']['with_transfer_best_s'] * 1e3:.2f} ms copied from the host first), "
            f"cpu {r['cpu']['best_s'] * 1e3:.1f} ms, indices "
            f"equal: {r['indices_agree']} ({r['rows_differing']} of {N_QUERIES} rows differ), neighbours agree "
            f"up to float32 rounding: {r['neighbours_agree']}",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes only (seconds; the CI smoke run)")
    ap.add_argument("--gpu-only", action="store_true", help="synthetic panels, exact search on CUDA and CPU")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None, help="haplotype counts")
    ap.add_argument("--length", type=float, default=5e6, help="simulated bases (default 5 Mb)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per figure (best is reported)")
    ap.add_argument("--block-sites", type=int, default=256, help="sites decoded at once while building")
    ap.add_argument(
        "--synthetic-sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[],
        help="haplotype counts searched on synthetic panels only (no store: too long to build on a small machine)",
    )
    ap.add_argument("--vcf2zarr-max", type=int, default=200_000, help="largest N converted with bio2zarr")
    ap.add_argument("--layout-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    ap.add_argument("--layout-heights", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024, 4096, 16384])
    ap.add_argument("--work", type=Path, default=None, help="where the scratch folder goes (default: TMPDIR)")
    ap.add_argument("--out", type=Path, default=None, help="directory for the JSON result and the plot")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, payload = args.child
        res = (_child_build if kind == "build" else _child_search)(json.loads(payload))
        print(json.dumps(res))
        return res

    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else SIZES)
    if args.quick:
        args.length, args.repeat = min(args.length, 1e6), min(args.repeat, 3)
    if args.layout_sizes is None:
        args.layout_sizes = [] if args.quick else [n for n in args.sizes if n in (20_000, 200_000)]
    from .common import machine, write_result

    result: dict[str, Any] = {"benchmark": "scale", "quick": args.quick, "gpu_only": args.gpu_only}
    result["machine"] = machine()
    if args.gpu_only:
        result["gpu"] = run_gpu(args)
        name = "scale_gpu"
    else:
        with tempfile.TemporaryDirectory(prefix="vcfstore-scale-", dir=args.work or os.environ.get("TMPDIR")) as tmp:
            result.update(run_stores(args, Path(tmp)))
        if args.synthetic_sizes:
            result["synthetic"] = run_synthetic(args)
        name = "scale_quick" if args.quick else "scale"
    result["parameters"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "child"}
    print_report(result)
    path = write_result(name, result, args.out)
    try:
        plot(result, path.with_suffix(".png"))
    except ImportError:  # matplotlib is optional on a GPU machine
        print("matplotlib is not installed: no plot")
    print(f"wrote {path}")
    if any(not r["neighbours_agree"] for r in result.get("gpu", [])):
        raise SystemExit("the exact search on CUDA found other neighbours than the CPU's (see above)")
    return result


if __name__ == "__main__":
    main()
