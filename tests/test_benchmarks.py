"""Smoke tests: the benchmarks' quick versions run and write their results (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_designs_quick(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.designs", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "designs_quick.json").read_text())
    rows = [row for row in result["summary"] if not row.get("phase")]
    assert {row["design"] for row in rows} == {"ram", "disk", "faiss", "exact"}
    assert all("failed" not in row for row in result["summary"]), result["summary"]
    assert all(row["agreement_with_ram"] == 1.0 for row in rows)
    assert (tmp_path / "designs_quick.png").stat().st_size > 10_000


def test_storage_layout_quick(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.storage_layout", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    panel = json.loads((tmp_path / "storage_layout_quick.json").read_text())["panels"][0]
    assert panel["vcfstore_over_vcf2zarr"] < 1
