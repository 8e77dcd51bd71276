"""Smoke tests: the benchmarks' quick versions run and write their results (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT


def _run_quick(module: str, out) -> None:
    r = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_designs_quick(tmp_path):
    _run_quick("benchmarks.designs", tmp_path)
    result = json.loads((tmp_path / "designs_quick.json").read_text())
    rows = [row for row in result["summary"] if not row.get("phase")]
    assert {row["design"] for row in rows} == {"ram", "disk", "faiss", "exact"}
    assert all("failed" not in row for row in result["summary"]), result["summary"]
    assert all(row["agreement_with_ram"] == 1.0 for row in rows)
    assert (tmp_path / "designs_quick.png").stat().st_size > 10_000
    # The per-query neighbour lists stay out of the summary file (kept in git) and go to the raw one.
    assert "neighbours" not in (tmp_path / "designs_quick.json").read_text()
    raw = json.loads((tmp_path / "designs_quick_raw.json").read_text())
    assert all("neighbours" in r for r in raw["phase_a"] if r["design"] != "faiss-extras")


def test_storage_layout_quick(tmp_path):
    _run_quick("benchmarks.storage_layout", tmp_path)
    panel = json.loads((tmp_path / "storage_layout_quick.json").read_text())["panels"][0]
    assert panel["vcfstore_over_vcf2zarr"] < 1


def test_integrity_quick(tmp_path):
    _run_quick("benchmarks.integrity", tmp_path)
    result = json.loads((tmp_path / "integrity_quick.json").read_text())
    assert result["store_reads"]["window_verified_ms"] > 0 and result["index_first_open"]["warm_s"] > 0


def test_scale_quick(tmp_path):
    _run_quick("benchmarks.scale", tmp_path)
    result = json.loads((tmp_path / "scale_quick.json").read_text())
    stores = result["stores"]
    assert [s["n"] for s in stores] == [200, 2000]
    assert all(s["vcfstore_bits"] < s["vcf2zarr_bits"] for s in stores)
    assert all(0 < s["build"]["grew"] < s["build_bound"] for s in stores)
    assert all(s["reads"]["vcfstore_gather16_ms"] > 0 for s in stores)
    assert [r["n"] for r in result["search"]] == [200, 2000] and all(r["cpu"]["best_s"] > 0 for r in result["search"])
    assert (tmp_path / "scale_quick.png").stat().st_size > 10_000


def test_ingest_quick(tmp_path):
    _run_quick("benchmarks.ingest", tmp_path)
    result = json.loads((tmp_path / "ingest_quick.json").read_text())
    (panel,) = result["panels"].values()
    assert panel["vcfstore build"]["seconds"] > 0 and panel["vcf2zarr convert -p 0"]["bytes"] > 0


def test_object_storage_quick(tmp_path):
    _run_quick("benchmarks.object_storage", tmp_path)
    result = json.loads((tmp_path / "object_storage_quick.json").read_text())
    reads = result["window_reads"]
    assert {"local", "s3_uncached", "s3_cached_first_pass", "s3_cached_second_pass"} <= set(reads)
    assert all(r["median_ms"] > 0 for r in reads.values()) and result["chunk_cache"]["hits"] > 0
    assert result["fork_after_parent_read_by_client"]["fsspec"]["fork_after_parent_read"] == "ok"


def test_training_step_quick(tmp_path):
    _run_quick("benchmarks.training_step", tmp_path)
    result = json.loads((tmp_path / "training_step_quick.json").read_text())
    rows = result["per_batch"]["rows"]
    assert all(row["agreement_with_original"] == 1.0 for row in rows)  # the same neighbours as the original
    assert {row["mode"] for row in rows} == {"eval", "train"} and {row["k"] for row in rows} == {1, 8}
    assert all(row["plan"].startswith(("eval mode", "verified")) for row in rows)  # composed in both modes
    assert all(s["composed"] < s["direct"] for s in result["summary"]["saved_bytes"])
    epochs = result["summary"]["epochs"]
    assert len(epochs) == 2 and sum(not e["subset"] for e in epochs) == 1
    assert all(e["batches_run"] > 0 and e["peak_anon"] > 0 and e["budget_refused"] == 0 for e in epochs)
    assert {g["goal"] for g in result["summary"]["goals"]} == {
        "search_k8_d192",
        "augment_k8_d192",
        "augment_k8_d384",
        "augment_k1_d192",
        "saved_bytes_k8_d192",
        "epoch_retrieval_k8_d192",
    }
    assert (tmp_path / "training_step_quick.png").stat().st_size > 10_000


def test_partitioned_quick(tmp_path):
    _run_quick("benchmarks.partitioned", tmp_path)
    result = json.loads((tmp_path / "partitioned_quick.json").read_text())
    (panel,) = result["panels"].values()
    assert panel["identical_files"] and panel["serial"]["seconds"] > 0
    assert panel["workers_2"]["finalise_s"] > 0 and sum(p["sites"] for p in panel["partitions"]) > 0
