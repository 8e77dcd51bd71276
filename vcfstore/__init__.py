"""vcfstore: retrieval over a full reference panel inside a fixed RAM ceiling.

The layers, bottom up (each imports only those below it):

* :mod:`vcfstore.sources` - input panels (VCF/BCF, VCF Zarr, arrays, tree sequences) as streams of
  phased biallelic sites, through one input policy;
* :mod:`vcfstore.store` - the panel store: format, vocabulary, reader, streamed resumable builder,
  windows, deterministic masks (:func:`open_store`, :func:`build_store`, :class:`MaskSchedule`);
* :mod:`vcfstore.memory` - the :class:`MemoryBudget`: cgroup-aware limits, cheap meters, budgeted LRU
  caches and the decoded-window cache;
* :mod:`vcfstore.retrieval` - embedding calls, the exact token-space search, the :class:`Retriever`
  and the PyTorch data path (:class:`TargetDataset`, :class:`WindowGroupedBatchSampler`, :func:`collate`);
* :mod:`vcfstore.index` - per-window FAISS index sets on disk (:class:`IndexSet`);
* :mod:`vcfstore.app` - the command line, the demo and the tables people read.

Every exception is in :mod:`vcfstore.errors`. Importing ``vcfstore`` loads neither torch nor
FAISS: the torch-backed names load on first use.
"""

from __future__ import annotations

import importlib

from vcfstore import _legacy
from vcfstore._version import __version__
from vcfstore.errors import (
    ArgumentError,
    IndexSetError,
    InputError,
    InputWarning,
    MemoryBudgetExceeded,
    NotPositionwiseError,
    ReadOnlyIndexError,
    StaleIndexError,
    StoreError,
    VcfstoreError,
)
from vcfstore.memory import MemoryBudget, WindowCache
from vcfstore.sources import ArraySource, InputPolicy, TreeSequenceSource, VcfSource, VcfZarrSource
from vcfstore.store import (
    AlignedTarget,
    AlignmentReport,
    EpochMasks,
    MaskSchedule,
    PanelStore,
    Vocabulary,
    build_from_arrays,
    build_store,
    build_store_parallel,
    masks_version,
    open_store,
    read_windows_csv,
)

_legacy.install()

# Torch-backed parts load on first use, so `import vcfstore` (and the CLI) stays light and no
# torch or FAISS state exists in a process that only reads stores.
_LAZY = {
    "IndexSet": "vcfstore.index",
    "Retriever": "vcfstore.retrieval",
    "TargetDataset": "vcfstore.retrieval",
    "WindowGroupedBatchSampler": "vcfstore.retrieval",
    "collate": "vcfstore.retrieval",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if f"vcfstore.{name}" in _legacy.MOVED:  # vcfstore.build and the like, as attributes
        return importlib.import_module(f"vcfstore.{name}")
    raise AttributeError(f"module 'vcfstore' has no attribute {name!r}")


__all__ = [
    "AlignedTarget",
    "AlignmentReport",
    "ArgumentError",
    "ArraySource",
    "EpochMasks",
    "IndexSet",
    "IndexSetError",
    "InputError",
    "InputWarning",
    "InputPolicy",
    "MaskSchedule",
    "MemoryBudget",
    "MemoryBudgetExceeded",
    "NotPositionwiseError",
    "PanelStore",
    "ReadOnlyIndexError",
    "Retriever",
    "StaleIndexError",
    "StoreError",
    "TargetDataset",
    "TreeSequenceSource",
    "VcfSource",
    "VcfZarrSource",
    "VcfstoreError",
    "Vocabulary",
    "WindowCache",
    "WindowGroupedBatchSampler",
    "__version__",
    "build_from_arrays",
    "build_store",
    "build_store_parallel",
    "collate",
    "masks_version",
    "open_store",
    "read_windows_csv",
]
