"""RAM, disk and time of four retrieval designs on the same panel and the same queries.

    python -m benchmarks.designs [--quick] [--d 192 384] [--full-windows 2] [--reduced-d 4]

Designs (one class each in benchmarks/design_kinds.py):
1. ram    the original: masked and complete embeddings plus a flat index per window, in RAM;
2. disk   the first fix: flat index files loaded with a plain read_index into a one-window
          cache, tokens as int64 in RAM, complete embeddings encoded on demand;
3. faiss  vcfstore: Zarr store, memory-mapped index files (IO_FLAG_MMAP_IFC), budgeted LRU;
4. exact  vcfstore: Zarr store, exact token-space search, no index files.

Each design runs in its own subprocess; its peak anonymous and resident memory are sampled from
outside. Phase A runs every design on a few windows at full embedding dimension; phase B runs
designs 3 and 4 over every window at a reduced dimension for the epoch figures (designs 1 and 2
rebuild their indexes every epoch: their epoch figures are extrapolated from phase A, and so are
all full-scale sizes).

Writes designs.json (machine, panel, summary rows, phase A's memory timelines: what the README
section and the plot read), designs.png, and designs_raw.json (every batch's timings and neighbours,
not kept in git).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import RESULTS, dir_bytes, drop_page_cache, write_result
from .design_kinds import (
    BATCH_SAMPLES,
    DESIGNS,
    EXTRAS,
    MAX_SEQ_LEN,
    REAL_HAPLOTYPES,
    REAL_WINDOWS,
    SITES_PER_WINDOW,
    Bench,
    Design,
)
from .designs_report import plot, print_summary, readme_section, summarize


def measure(design_cls: type[Design], cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one design on cfg["windows"] (in the worker process); returns timings, neighbours, sizes.

    Per window and K: a cold batch (page cache dropped, the design's window state forgotten), then
    a warm one; the neighbours of the warm batch at the largest K are kept for the agreement check.
    """
    bench = Bench.open(cfg)
    design = design_cls(bench)
    out: dict[str, Any] = {
        "design": design.name,
        "d": cfg["d"],
        "windows": cfg["windows"],
        "batches": {},
        "neighbours": {},
    }
    ks = cfg["ks"]
    times: dict[str, float] = {"build": 0.0}
    design.setup(times)
    for w in cfg["windows"]:
        q = bench.queries(w)
        af = bench.ref.window_af(w)
        design.enter_window(w, bench.masks[w], af, times)
        for k in ks:
            for phase in ("cold", "warm"):
                if phase == "cold":
                    drop_page_cache(Path(cfg["reference"]), bench.work)
                    design.go_cold()
                parts: dict[str, float] = {}
                d, i = design.batch(w, q, af, k, parts)
                parts["total"] = sum(parts.values())
                out["batches"].setdefault(f"K={k}", {}).setdefault(phase, []).append(parts)
                if k == max(ks) and phase == "warm":
                    out["neighbours"][str(w)] = design.neighbours(d, i)
    out.update(design.report)
    out["build_s"] = times["build"]
    return out


# A worker job per design, and the extra measurements that run in processes of their own.
WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    **{name: functools.partial(measure, cls) for name, cls in DESIGNS.items()},
    **EXTRAS,
}


def _run_design(design: str, cfg: dict[str, Any]) -> dict[str, Any]:
    from vcfstore.testing import run_measured

    argv = [sys.executable, "-m", "benchmarks.designs", "--worker", design, "--config", json.dumps(cfg)]
    run = run_measured(argv, interval=0.01, timeout=3600)
    if run.returncode != 0:
        return {"design": design, "d": cfg["d"], "failed": run.stderr.strip().splitlines()[-1:]}
    res = json.loads(run.stdout.strip().splitlines()[-1])
    res.update(
        peak_anon=run.peak_anon, peak_rss=run.peak_rss, timeline=run.timeline[:: max(1, len(run.timeline) // 400)]
    )
    return res


def split_result(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary (what the tables, the README section and the plot read) and the raw figures.

    The raw figures, every batch's timings and the neighbour lists of every window, are what
    :func:`~benchmarks.designs_report.summarize` reads; nothing reads them after that.
    """
    head = {key: result[key] for key in ("benchmark", "quick", "panel")}
    timelines = [
        {"design": r["design"], "d": r["d"], "timeline": r["timeline"]}
        for r in result["phase_a"]
        if r["design"] in DESIGNS and "timeline" in r
    ]
    summary = {**head, "summary": result["summary"], "timelines": timelines}
    raw = {**head, "phase_a": result["phase_a"], "phase_b": result["phase_b"]}
    return summary, raw


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small panel and dimension (about a minute)")
    ap.add_argument("--d", type=int, nargs="+", default=[192, 384], help="full embedding dimensions (phase A)")
    ap.add_argument("--full-windows", type=int, default=2, help="windows measured at full dimension")
    ap.add_argument("--reduced-d", type=int, default=4, help="dimension of the all-windows run (phase B)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (needs tens of GB at full scale)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--readme", type=Path, help="print the README section of a result file and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](json.loads(args.config))))
        return {}
    if args.readme:
        print(readme_section(json.loads(args.readme.read_text())))
        return {}
    from vcfstore.simulate import simulate_reference_and_targets

    if args.quick:
        n_ref, n_windows, ds, full_windows, reduced = 100, 6, [16], 1, 4
    else:
        n_ref, n_windows, ds, full_windows, reduced = (
            REAL_HAPLOTYPES // 2,
            REAL_WINDOWS,
            args.d,
            args.full_windows,
            args.reduced_d,
        )
    tmp = Path(tempfile.mkdtemp(prefix="vcfstore-designs-", dir=args.work))
    try:
        t0 = time.perf_counter()
        # Sites per Mb for 1004 samples at these rates: about 4,100; take enough for n_windows.
        length = n_windows * SITES_PER_WINDOW / 4000 * 1e6 * (1.0 if not args.quick else 1.6)
        ref, tgt = simulate_reference_and_targets(
            tmp,
            n_reference=n_ref,
            n_target=BATCH_SAMPLES,
            sequence_length=length,
            window_size=SITES_PER_WINDOW,
            max_seq_len=MAX_SEQ_LEN,
        )
        store_build_s = time.perf_counter() - t0
        base_cfg = {
            "reference": str(ref.path),
            "targets": str(tgt.path),
            "work": str(tmp),
            "threads": 2,
            "ks": [1, 8],
            "budget": "8GB",
            "mapped_budget": "4GB",
            "approx_kinds": ["fp16", "IVF16,Flat"],
        }
        phase_a = []
        for d in ds:
            cfg = {**base_cfg, "d": d, "windows": list(range(full_windows))}
            if d >= 384 and not args.quick:
                cfg["windows"] = cfg["windows"][:1]  # 9.5 GB a window in design 1
            jobs = [*DESIGNS, *(c.extras_job for c in DESIGNS.values() if c.extras_job)]
            for design in jobs:
                print(f"phase A: {design} at D={d} on {len(cfg['windows'])} window(s)", flush=True)
                phase_a.append(_run_design(design, cfg))
                shutil.rmtree(tmp / f"ix_{d}", ignore_errors=True)
                for p in tmp.glob("disk_*.faiss"):
                    p.unlink()
        phase_b = []
        cfg = {**base_cfg, "d": reduced, "windows": list(range(ref.n_windows))}
        for design in (name for name, c in DESIGNS.items() if c.all_windows):
            print(f"phase B: {design} at D={reduced} on all {ref.n_windows} windows", flush=True)
            phase_b.append(_run_design(design, cfg))
        result = {
            "benchmark": "designs",
            "quick": args.quick,
            "panel": {
                "haplotypes": ref.n_haplotypes,
                "sites": ref.n_sites,
                "windows": ref.n_windows,
                "max_seq_len": ref.max_seq_len,
                "store_bytes": dir_bytes(ref.path),
                "store_build_s": store_build_s,
            },
            "phase_a": phase_a,
            "phase_b": phase_b,
        }
        result["summary"] = summarize(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    name = "designs" + ("_quick" if args.quick else "")
    summary, raw = split_result(result)
    path = write_result(name, summary, args.out)
    raw_path = write_result(f"{name}_raw", raw, args.out)
    summary = json.loads(path.read_text())  # with the machine, as the README section and the plot read it
    png = args.out / f"{name}.png"
    plot(summary, png)
    print_summary(summary)
    print(f"wrote {path}, {raw_path} and {png}")
    return {**summary, **raw}


if __name__ == "__main__":
    main()
