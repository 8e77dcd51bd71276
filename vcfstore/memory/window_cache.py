"""Decoded windows kept in RAM under the memory budget, for window-grouped access."""

from __future__ import annotations

import numpy as np

from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.lru import LruCache
from vcfstore.store.reader import PanelStore
from vcfstore.store.vocab import layout_tokens


class WindowCache:
    """Whole decoded windows (uint8 alleles [n_haplotypes, n_sites]) in a budgeted LRU cache.

    Batches grouped by window read the window's chunks once and then gather rows from RAM.
    Each window is admitted with the budget before it is decoded, so the cache shrinks (and
    other caches are evicted) instead of the process growing past its ceiling.

    Parameters
    ----------
    store : PanelStore
    budget : MemoryBudget, optional
    max_windows : int, optional
        A count limit on top of the budget.
    """

    def __init__(self, store: PanelStore, budget: MemoryBudget | None = None, *, max_windows: int | None = None):
        self.store = store
        self.cache: LruCache[np.ndarray] = LruCache("decoded windows", budget, max_entries=max_windows)

    def alleles(self, w: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Alleles of window ``w`` (all rows, or ``rows`` gathered from the cached window).

        The gathered copy is admitted before it is made, so other windows are evicted first.
        """
        full = self.cache.get(w)
        if full is None:
            sites = self.store.window_sites(w)
            nbytes = self.store.n_haplotypes * len(sites)
            self.cache.admit(anon=nbytes, what=f"decoding window {w}")
            full = self.store.window_alleles(w)
            self.cache.put(w, full, anon=full.nbytes)
        if rows is None:
            return full
        rows = np.asarray(rows)
        self.cache.admit(anon=len(rows) * full.shape[1], what=f"gathering {len(rows)} rows of window {w}")
        return full[rows]

    def tokens(self, w: int, rows: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        """Tokens laid out as :meth:`PanelStore.window_tokens` gives them, from the cache.

        The int64 rows (and the layout's temporary of the same size) are admitted first.
        """
        n = self.store.n_haplotypes if rows is None else len(rows)
        alleles = self.alleles(w, rows)
        self.cache.admit(anon=2 * 8 * n * self.store.max_seq_len, what=f"laying out {n} token rows of window {w}")
        return layout_tokens(alleles, self.store.max_seq_len, self.store.vocab, mask)
