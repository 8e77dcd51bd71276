"""The package's shape: light imports, the old module paths, one home for exceptions."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings

import pytest

import vcfstore as vs


@pytest.mark.parametrize("module", ["vcfstore", "vcfstore.store", "vcfstore.sources", "vcfstore.memory"])
def test_store_and_sources_load_neither_torch_nor_faiss(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("vcfstore.faiss_disk", "IndexSet", "vcfstore.index"),
        ("vcfstore.meter", "run_measured", "vcfstore.testing"),
        ("vcfstore.meter", "StatmMeter", "vcfstore.memory.meters"),
        ("vcfstore.budget", "MemoryBudget", "vcfstore.memory.budget"),
        ("vcfstore.exact", "NotPositionwiseError", "vcfstore.errors"),
        ("vcfstore.build", "build_store", "vcfstore.store.builder"),
        ("vcfstore.models", "PositionwiseEmbedding", "vcfstore.retrieval.layers"),
        ("vcfstore.data", "TargetDataset", "vcfstore.retrieval.torch_data"),
    ],
)
def test_old_module_paths_still_import(old, name, new):
    import importlib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.modules.pop(old, None)
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)
    assert any(issubclass(w.category, DeprecationWarning) and f"{old} moved to" in str(w.message) for w in caught)


def test_every_exception_is_in_errors_and_argument_errors_are_value_errors():
    import vcfstore.errors as errors

    for name in errors.__all__:
        assert getattr(vs, name) is getattr(errors, name)
    assert issubclass(vs.ArgumentError, ValueError) and issubclass(vs.InputError, ValueError)
    with pytest.raises(ValueError, match="rate must be in"):
        vs.MaskSchedule(1).site_mask([0.1], 0, 0, 2.0)


def test_a_dropped_cache_stops_counting():
    from vcfstore.memory import LruCache

    budget = vs.MemoryBudget("1GB")
    held = [LruCache(f"c{i}", budget) for i in range(5)]
    assert len(budget.consumers) == 5
    del held[:3]
    gc.collect()
    assert [c.name for c in budget.consumers] == ["c3", "c4"]
