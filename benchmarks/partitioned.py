"""Partitioned builds: wall time of a serial build against ``--workers 2``, and what each part costs.

Run ``python -m benchmarks.partitioned`` (``--quick`` for a smoke run). Each build runs in its own
process, one after the other on the same cores; times are measured inside the process around the
work alone (interpreter start-up excluded; the worker processes' start-up included, as a user pays
it). The parallel build is timed step by step (plan, parts in a pool of 2 spawned processes,
finalise), with each part's sites, intermediate bytes and seconds: what a cluster job array needs
to be sized. The two stores are compared file by file (every file but the root ``zarr.json``).
The machine's load average is recorded before and after: the cores may be shared.
Panels: the real 1000 Genomes chr20 reference in ``../shared/data`` (it has a .csi index) and an
msprime panel written as a bgzipped, tabix-indexed VCF.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from vcfstore.testing import run_measured

from .common import dir_bytes, vcf_panels, write_result

_SERIAL = """
import json, sys, time
import vcfstore as vs
t = time.perf_counter()
vs.build_store(vs.VcfSource(sys.argv[1]), sys.argv[2], progress=False)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""
_PARALLEL = """
import json, sys, time
from vcfstore.store import partitioned as p
if __name__ == "__main__":
    source, out, workers, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    t0 = time.perf_counter()
    plan = p.plan_partitions(source, out, partitions=n)
    t1 = time.perf_counter()
    parts = p.run_partitions(out, range(len(plan["partitions"])), workers=workers)
    t2 = time.perf_counter()
    p.finalise_partitions(out, progress=False)
    t3 = time.perf_counter()
    print(json.dumps({
        "seconds": t3 - t0, "plan_s": t1 - t0, "parts_s": t2 - t1, "finalise_s": t3 - t2,
        "parts": [{k: r[k] for k in ("sites", "records", "bytes", "seconds")} for r in parts],
    }))
"""


def _run(code: str, *args: str) -> dict[str, Any]:
    r = run_measured([sys.executable, "-c", code, *args], interval=0.01)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "peak_anon": r.peak_anon}


def _files(store: Path) -> dict[str, str]:
    return {
        p.relative_to(store).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.relative_to(store).as_posix() != "zarr.json"
    }


def measure(vcf: Path, work: Path, n_haplotypes: int, workers: int, partitions: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    serial = _run(_SERIAL, str(vcf), str(work / "serial.vcfstore"))
    parallel = _run(_PARALLEL, str(vcf), str(work / "parallel.vcfstore"), str(workers), str(partitions))
    parts = parallel.pop("parts")
    return {
        "haplotypes": n_haplotypes,
        "records": sum(p["records"] for p in parts),
        "vcf_bytes": vcf.stat().st_size,
        "store_bytes": dir_bytes(work / "serial.vcfstore"),
        "serial": serial,
        f"workers_{workers}": {**parallel, "speedup": serial["seconds"] / parallel["seconds"]},
        "partitions": parts,
        "identical_files": _files(work / "serial.vcfstore") == _files(work / "parallel.vcfstore"),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small simulated panel only (smoke test)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    partitions = 4 * args.workers
    results = {}
    with tempfile.TemporaryDirectory(prefix="vcfstore-partitioned-") as tmp:
        work = Path(tmp)
        for name, vcf, haps, sub in vcf_panels(work, args.quick, (4_000, 1e6), (200, 2e5), indexed=True):
            results[name] = measure(vcf, sub, haps, args.workers, partitions)
    path = write_result(
        "partitioned_quick" if args.quick else "partitioned",
        {"workers": args.workers, "partitions_asked": partitions, "panels": results},
        args.out,
    )
    for name, r in results.items():
        par = r[f"workers_{args.workers}"]
        print(f"\n{name}: {r['records']:,} records, {r['vcf_bytes']:,} VCF bytes, identical: {r['identical_files']}")
        print(f"serial {r['serial']['seconds']:.2f} s; {args.workers} workers {par['seconds']:.2f} s ", end="")
        print(f"(plan {par['plan_s']:.2f}, parts {par['parts_s']:.2f}, finalise {par['finalise_s']:.2f}), ", end="")
        print(f"x{par['speedup']:.2f}; load {r['load_average_1min']}")
        print("| part | records | sites | bytes | seconds |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for i, p in enumerate(r["partitions"]):
            print(f"| {i} | {p['records']:,} | {p['sites']:,} | {p['bytes']:,} | {p['seconds']:.2f} |")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
