"""Ingest speed: ``vcfstore build`` against bio2zarr's ``vcf2zarr convert`` and the decoding floor.

Run ``python -m benchmarks.ingest`` (``--quick`` for a smoke run). Each tool runs on the same
VCF file in its own process, one after the other on the same cores: the time is measured inside
the process around the work alone (interpreter start-up and the imports of the modules the tool
uses excluded, for every tool) and the peak anonymous memory is sampled from outside. The floor
is cyvcf2 decoding every record's genotypes and nothing else. The floor and ``vcfstore build``
(at the default Zstd level, and at level 15) run ``--repeat`` times, alternately, and their
medians are reported (this machine's timings
vary by 10 % and more from minute to minute, so only figures taken side by side are compared);
``vcf2zarr`` runs once. Panels: the real 1000 Genomes chr20 reference in ``../shared/data`` and
an msprime panel of 20,000 haplotypes written as a VCF.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vcfstore.store.builder import DEFAULT_ZSTD_LEVEL
from vcfstore.testing import run_measured

from .common import dir_bytes, vcf_panels, write_result

# Each snippet does its work between two clock reads and prints the seconds as JSON.
_FLOOR = """
import json, sys, time
from cyvcf2 import VCF
t = time.perf_counter()
n = 0
for rec in VCF(sys.argv[1]):
    rec.genotype.array()
    n += 1
print(json.dumps({"seconds": time.perf_counter() - t, "records": n}))
"""
_VCFSTORE = """
import json, sys, time
import vcfstore as vs
import cyvcf2, numcodecs, tqdm.auto, zarr, zarr.codecs, vcfstore.store.builder  # imported lazily by a build
t = time.perf_counter()
vs.build_store(vs.VcfSource(sys.argv[1]), sys.argv[2], progress=False, zstd_level=int(sys.argv[3]))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""
_VCF2ZARR = """
import json, sys, time
from bio2zarr import vcf
import cyvcf2, numcodecs, zarr  # as for vcfstore: imports are start-up
t = time.perf_counter()
vcf.convert([sys.argv[1]], sys.argv[2], worker_processes=0)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def _run(code: str, *args: str) -> dict[str, Any]:
    r = run_measured([sys.executable, "-c", code, *args], interval=0.01)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "peak_anon": r.peak_anon}


def measure(vcf: Path, work: Path, n_haplotypes: int, repeat: int) -> dict[str, Any]:
    levels = {"vcfstore build": DEFAULT_ZSTD_LEVEL, "vcfstore build --zstd-level 15": 15}
    stores = {name: work / f"panel-zstd{level}.vcfstore" for name, level in levels.items()}
    runs: dict[str, list[dict[str, Any]]] = {"cyvcf2 decode (floor)": [], **{name: [] for name in levels}}
    for _ in range(repeat):  # alternately: all see the machine as it is at that minute
        runs["cyvcf2 decode (floor)"].append(_run(_FLOOR, str(vcf)))
        for name, level in levels.items():
            runs[name].append(_run(_VCFSTORE, str(vcf), str(stores[name]), str(level)))
            shutil.rmtree(stores[name])
    for name, level in levels.items():
        _run(_VCFSTORE, str(vcf), str(stores[name]), str(level))  # the stores whose bytes are reported
    medians = {name: _median(r) for name, r in runs.items()}
    floor = medians["cyvcf2 decode (floor)"]
    records = floor["records"]
    out: dict[str, Any] = {"records": records, "haplotypes": n_haplotypes, "vcf_bytes": vcf.stat().st_size}
    out["repeat"] = repeat
    out["runs_seconds"] = {name: [r["seconds"] for r in rs] for name, rs in runs.items()}
    tools = {name: (median, stores.get(name)) for name, median in medians.items()}
    vcz = work / "panel.vcz"
    tools["vcf2zarr convert -p 0"] = (_run(_VCF2ZARR, str(vcf), str(vcz)), vcz)
    for name, (r, path) in tools.items():
        out[name] = {
            "seconds": r["seconds"],
            "records_per_s": records / r["seconds"],
            "genotypes_per_s": records * n_haplotypes / r["seconds"],
            "peak_anon": r["peak_anon"],
            "bytes": dir_bytes(path) if path is not None else None,
            "x_floor": r["seconds"] / floor["seconds"],
        }
    return out


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median time (the upper one of an even count), with the largest peak memory of all."""
    mid = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
    return {**mid, "peak_anon": max(r["peak_anon"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small panels (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--repeat", type=int, default=5, help="runs of the floor and of vcfstore, alternately")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="vcfstore-ingest-") as tmp:
        work = Path(tmp)
        for name, vcf, haps, sub in vcf_panels(work, args.quick, (20_000, 1e6), (400, 2e5)):
            results[name] = measure(vcf, sub, haps, 1 if args.quick else args.repeat)
    path = write_result("ingest_quick" if args.quick else "ingest", {"panels": results}, args.out)
    for name, r in results.items():
        print(f"\n{name}: {r['records']:,} records (floor and vcfstore: medians of {r['repeat']} alternate runs)")
        print("| tool | seconds | records/s | genotypes/s | peak anon MB | bytes | x floor |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for tool, t in r.items():
            if isinstance(t, dict) and "x_floor" in t:
                size = f"{t['bytes']:,}" if t["bytes"] is not None else "-"
                print(
                    f"| {tool} | {t['seconds']:.2f} | {t['records_per_s']:,.0f} | {t['genotypes_per_s']:.3g} | "
                    f"{t['peak_anon'] / 1e6:.0f} | {size} | {t['x_floor']:.2f} |"
                )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
