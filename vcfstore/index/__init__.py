"""Per-window FAISS index sets on disk: manifest, streamed codes writer, builder, mapped reads.

Importing this package does not import FAISS; the first build or search does.
"""

from __future__ import annotations

from vcfstore.errors import IndexSetError, ReadOnlyIndexError, StaleIndexError
from vcfstore.index.index_set import IndexSet
from vcfstore.index.manifest import INDEX_FORMAT_VERSION, INDEX_KINDS, Manifest, WindowEntry
from vcfstore.index.mapping import ADVICE, DEFAULT_ADVICE, MappedIndex, advise_mapping

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
