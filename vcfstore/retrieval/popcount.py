"""Counts of shared set bits between packed query rows and packed reference rows: the exact search's inner loop.

``popcount_and(q, ref)[i, r] = popcount(q[i] & ref[r])`` over rows of 64-bit words. The loop is
compiled by Numba (LLVM turns it into vector popcounts), one block of references at a time so a
block's words stay in the core's cache while every query row passes over it; blocks are split
across a small thread pool (the kernel releases the GIL). At 200,000 references x 17 words x
49 query rows this counts in about 20 ms on 2 cores where NumPy's three passes (AND, count, add)
over the same words took about 200 ms (``benchmarks/scale.py``).

The kernel compiles on first use (about a second) and is cached on disk next to this module
(or in Numba's user cache where that is read-only), so later processes load it.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

# References a thread is given at least: below it waking a second thread costs more than it saves
# (a window-grouped batch of 48 queries x 2,008 references counts in well under a millisecond).
THREAD_REFS = 16384
# References per block of the kernel: 256 x 17 words (a 1,028-site window) is 35 KB, in L1/L2.
BLOCK_REFS = 256

# The SWAR popcount's constants, as uint64 (a Python int would make Numba mix uint64 and int64 into float64).
_U1, _U2, _U4, _U56 = (np.uint64(n) for n in (1, 2, 4, 56))
_M1, _M2, _M4, _H01 = (
    np.uint64(m) for m in (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101)
)

_POOL: ThreadPoolExecutor | None = None  # one worker per core: made on first use
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    # A forked child (a DataLoader worker) inherits the pool object but none of its threads.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="vcfstore-popcount")
        return _POOL


os.register_at_fork(after_in_child=_forget_pool)


def words_of(packed: np.ndarray) -> np.ndarray:
    """Rows of packed bytes [n, m] as 64-bit words [n, ceil(m / 8)], 8 bytes to a word (the last zero-padded)."""
    words = np.zeros((len(packed), -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    words[:, : packed.shape[1]] = packed
    return words.view(np.uint64)


def pack_words(bits: np.ndarray) -> np.ndarray:
    """Rows of 0/1 values [n, m] (any nonzero is 1) as 64-bit words [n, ceil(m / 64)], unused bits 0.

    The bits are in :func:`numpy.packbits` order, that of :meth:`PanelStore.read_packed
    <vcfstore.store.reader.PanelStore.read_packed>`, 8 bytes to a word: counts of ``a & b`` need
    only both sides packed alike.
    """
    return words_of(np.packbits(bits, axis=1))


@functools.cache
def _kernel() -> Callable[..., None]:
    """The compiled kernel (Numba is imported on first use: ``import vcfstore`` stays light)."""
    import numba

    def and_counts(q: Any, ref: Any, out: Any, start: int, stop: int) -> None:
        n_q, n_words = q.shape
        for s in range(start, stop, BLOCK_REFS):
            e = min(stop, s + BLOCK_REFS)
            for i in range(n_q):
                for r in range(s, e):
                    acc = _U1 - _U1
                    for j in range(n_words):
                        x = q[i, j] & ref[r, j]
                        # SWAR popcount: LLVM recognises it and emits the CPU's popcount instruction.
                        x = x - ((x >> _U1) & _M1)
                        x = (x & _M2) + ((x >> _U2) & _M2)
                        x = (x + (x >> _U4)) & _M4
                        acc += (x * _H01) >> _U56
                    out[i, r] = acc

    try:
        return numba.njit(nogil=True, cache=True)(and_counts)
    except RuntimeError:  # no writable cache directory (a read-only install): compile in each process
        return numba.njit(nogil=True)(and_counts)


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, torch.get_num_threads()))


def popcount_and(q: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``popcount(q[i] & ref[r])`` for packed query rows ``q`` [n_q, words] and references ``ref`` [n_ref, words].

    Both uint64 (:func:`words_of`, :func:`pack_words`); the result is uint16 (uint32 past 65,535
    bits) [n_q, n_ref]. References are split across up to ``torch.get_num_threads()`` threads.
    """
    if q.dtype != np.uint64 or ref.dtype != np.uint64 or q.shape[1] != ref.shape[1]:
        got = f"{q.dtype} {q.shape}, {ref.dtype} {ref.shape}"
        raise ValueError(f"popcount_and takes uint64 rows of equal width, not {got}")
    n_ref, words = ref.shape
    q, ref = np.ascontiguousarray(q), np.ascontiguousarray(ref)
    out = np.empty((len(q), n_ref), dtype=np.uint16 if words * 64 < 2**16 else np.uint32)
    kernel = _kernel()
    threads = min(_threads(), n_ref // THREAD_REFS)
    if threads <= 1:
        kernel(q, ref, out, 0, n_ref)
        return out
    pool = _pool()
    bounds = np.linspace(0, n_ref, threads + 1).astype(int)
    jobs = [pool.submit(kernel, q, ref, out, int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    for job in jobs:
        job.result()
    return out
