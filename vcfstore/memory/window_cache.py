"""Windows kept in RAM, bit-packed as stored, under the memory budget, for window-grouped access."""

from __future__ import annotations

import numpy as np

from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.lru import LruCache
from vcfstore.store.packed import PackedAlleles
from vcfstore.store.reader import PanelStore
from vcfstore.store.vocab import layout_tokens


class WindowCache:
    """Whole windows, bit-packed as the store keeps them (:class:`PackedAlleles`), in a budgeted LRU cache.

    Batches grouped by window read the window's chunks once and then gather rows from RAM;
    the exact search counts on the packed bits as they are, and only gathered rows are
    unpacked, so a cached window costs an eighth of its uint8 alleles (26 MB, not 206 MB, for
    200,000 haplotypes x 1,028 sites). Each window is admitted with the budget before it is
    read, so the cache shrinks (and other caches are evicted) instead of the process growing
    past its ceiling.

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

    def packed(self, w: int) -> PackedAlleles:
        """Every haplotype of window ``w``, bit-packed (read once, then from the cache)."""
        sites = self.store.window_sites(w)
        n_sites = len(sites)
        bits = self.cache.get(w)
        if bits is None:
            # The read's peak (decoded chunks, bit shifting), not just the packed bytes it keeps.
            self.cache.admit(anon=self.store.read_peak_bytes(sites.start, sites.stop), what=f"reading window {w}")
            bits = self.store.window_packed(w)
            # Read-only: every reader shares it, and a device copy of it is reused while it is the same array.
            bits.flags.writeable = False
            self.cache.put(w, bits, anon=bits.nbytes)
        return PackedAlleles(bits, n_sites)

    def alleles(self, w: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Alleles of window ``w``, unpacked: uint8 [n_rows, n_sites] (all rows, or ``rows`` gathered from the cache).

        The unpacked copy is admitted before it is made, so other windows are evicted first.
        """
        packed = self.packed(w)
        n = len(packed) if rows is None else len(rows)
        self.cache.admit(anon=n * packed.n_sites, what=f"unpacking {n} rows of window {w}")
        return packed.rows(None if rows is None else np.asarray(rows))

    def tokens(self, w: int, rows: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        """Tokens laid out as :meth:`PanelStore.window_tokens` gives them, from the cache.

        The int64 rows (and the layout's temporary of the same size) are admitted first.
        """
        n = self.store.n_haplotypes if rows is None else len(rows)
        alleles = self.alleles(w, rows)
        self.cache.admit(anon=2 * 8 * n * self.store.max_seq_len, what=f"laying out {n} token rows of window {w}")
        return layout_tokens(alleles, self.store.max_seq_len, self.store.vocab, mask)
