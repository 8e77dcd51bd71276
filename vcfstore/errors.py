"""Exceptions raised by vcfstore.

Every error a user can cause (a bad file, a wrong shape, an unknown window, a budget too small)
is a :class:`VcfstoreError` with a message that names the problem, so the command line can print
one line instead of a traceback.
"""

from __future__ import annotations


class VcfstoreError(Exception):
    """Base class of every error vcfstore raises on purpose."""


class InputError(VcfstoreError, ValueError):
    """The input panel (VCF/BCF, VCF Zarr or arrays) cannot be ingested as given."""


class StoreError(VcfstoreError):
    """A panel store is missing, incomplete, corrupt, or asked for something it does not hold."""
