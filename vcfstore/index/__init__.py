"""Per-window FAISS index sets on disk: manifest, streamed codes writer, builder, mapped reads.

Importing this package imports neither FAISS nor torch (``IndexSet``, which calls embedding
layers, loads on first use); the first build or search imports FAISS.
"""

from __future__ import annotations

from typing import Any

from vcfstore.errors import IndexSetError, ReadOnlyIndexError, StaleIndexError
from vcfstore.index.manifest import INDEX_FORMAT_VERSION, INDEX_KINDS, Manifest, WindowEntry
from vcfstore.index.mapping import ADVICE, DEFAULT_ADVICE, MappedIndex, advise_mapping


def __getattr__(name: str) -> Any:
    if name == "IndexSet":
        from vcfstore.index.index_set import IndexSet

        return IndexSet
    raise AttributeError(f"module 'vcfstore.index' has no attribute {name!r}")


__all__ = [
    "ADVICE",
    "DEFAULT_ADVICE",
    "INDEX_FORMAT_VERSION",
    "INDEX_KINDS",
    "IndexSet",
    "IndexSetError",
    "Manifest",
    "MappedIndex",
    "ReadOnlyIndexError",
    "StaleIndexError",
    "WindowEntry",
    "advise_mapping",
]
