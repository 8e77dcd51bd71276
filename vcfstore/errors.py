"""Every exception vcfstore raises on purpose, in one place.

Every error a user can cause (a bad file, a wrong argument, an unknown window, a damaged store, a
budget too small) is a :class:`VcfstoreError` whose message names the problem in one line, so the
command line prints that line instead of a traceback. Errors about an argument's value are also
``ValueError`` (as zarr's ``BaseZarrError`` is), so generic callers can catch them as such.
"""

from __future__ import annotations


class VcfstoreError(Exception):
    """Base class of every error vcfstore raises on purpose."""


class ArgumentError(VcfstoreError, ValueError):
    """An argument has a value vcfstore cannot use (a rate outside [0, 1], k out of range...)."""


class InputError(VcfstoreError, ValueError):
    """The input panel (VCF/BCF, VCF Zarr, arrays, a windows or frequency table) cannot be ingested as given."""


class InputWarning(UserWarning):
    """Input that builds but may not be what was meant (windows leaving sites uncovered...)."""


class StoreError(VcfstoreError):
    """A panel store is missing, incomplete, damaged, locked, or asked for something it does not hold."""


class IndexSetError(VcfstoreError):
    """An index set or index file is missing, damaged, foreign, or used wrongly."""


class StaleIndexError(IndexSetError):
    """An index was built with other masks, another layer or other weights than the caller's."""


class ReadOnlyIndexError(IndexSetError):
    """An attempt to modify a memory-mapped index (FAISS would abort the process)."""


class NotPositionwiseError(VcfstoreError):
    """The embedding mixes positions (a convolution, attention...): the exact backend cannot serve it."""


class MemoryBudgetExceeded(MemoryError, VcfstoreError):
    """An allocation cannot fit in the memory budget, even after evicting everything evictable."""


__all__ = [
    "ArgumentError",
    "IndexSetError",
    "InputError",
    "InputWarning",
    "MemoryBudgetExceeded",
    "NotPositionwiseError",
    "ReadOnlyIndexError",
    "StaleIndexError",
    "StoreError",
    "VcfstoreError",
]
