"""FAISS in this process: imported on first use, and kept off OpenMP threads after a fork.

A child forked from a process that had FAISS loaded inherits libgomp's state with a thread pool
that no longer exists, and its first parallel search can hang (seen here: a DataLoader fork
worker searching an index the parent had searched never returned). Such a child searches on
one thread; spawned or forkserver workers start clean and keep OpenMP's threads.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_FORKED_WITH_FAISS = False


def faiss() -> Any:
    """The ``faiss`` module (imported here, so nothing else loads it at import time)."""
    import faiss as _faiss_module

    return _faiss_module


def _after_fork_in_child() -> None:
    global _FORKED_WITH_FAISS
    _FORKED_WITH_FAISS = _FORKED_WITH_FAISS or "faiss" in sys.modules


os.register_at_fork(after_in_child=_after_fork_in_child)


def set_search_threads(requested: int | None) -> None:
    """Use ``requested`` OpenMP threads for the next searches (one in a child forked with FAISS)."""
    if _FORKED_WITH_FAISS:
        faiss().omp_set_num_threads(1)
    elif requested is not None:
        faiss().omp_set_num_threads(requested)
