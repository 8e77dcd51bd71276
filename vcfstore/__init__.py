"""vcfstore: retrieval over a full reference panel inside a fixed RAM ceiling.

The panel lives in a chunked Zarr store (:func:`open_store`, :func:`build_store`); masks come
from a deterministic :class:`MaskSchedule`; a :class:`MemoryBudget` holds the process under a
RAM ceiling, evicting cached windows and indexes before it can be OOM-killed. A
:class:`Retriever` finds the K nearest references of masked queries (exactly in token space,
or in per-window FAISS indexes on disk, :class:`IndexSet`) and encodes them on demand; the
PyTorch data path is :class:`TargetDataset`, :class:`WindowGroupedBatchSampler` and
:func:`collate`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .budget import MemoryBudget, MemoryBudgetExceeded
from .build import build_from_arrays, build_store
from .errors import InputError, StoreError, VcfstoreError
from .masks import EpochMasks, MaskSchedule, masks_version
from .sources import ArraySource, InputPolicy, VcfSource, VcfZarrSource
from .store import PanelStore, open_store
from .vocab import Vocabulary
from .window_cache import WindowCache
from .windows import read_windows_csv

# Torch-backed parts load on first use, so `import vcfstore` (and the CLI) stays light and no
# torch or FAISS state exists in a process that only reads stores.
_LAZY = {
    "IndexSet": "faiss_disk",
    "Retriever": "retrieval",
    "TargetDataset": "data",
    "WindowGroupedBatchSampler": "data",
    "collate": "data",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'vcfstore' has no attribute {name!r}")


__all__ = [
    "IndexSet",
    "Retriever",
    "TargetDataset",
    "WindowGroupedBatchSampler",
    "collate",
    "ArraySource",
    "EpochMasks",
    "InputError",
    "InputPolicy",
    "MaskSchedule",
    "MemoryBudget",
    "MemoryBudgetExceeded",
    "PanelStore",
    "StoreError",
    "VcfSource",
    "VcfZarrSource",
    "VcfstoreError",
    "Vocabulary",
    "WindowCache",
    "__version__",
    "build_from_arrays",
    "build_store",
    "masks_version",
    "open_store",
    "read_windows_csv",
]
