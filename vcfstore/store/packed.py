"""A window's alleles bit-packed along sites as the store keeps them: held by the exact search and window cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vcfstore.errors import ArgumentError


@dataclass(frozen=True)
class PackedAlleles:
    """A window's reference alleles bit-packed along sites: ``bits`` uint8 [n_ref, ceil(n_sites / 8)].

    Site ``j`` is bit ``7 - j % 8`` of byte ``j // 8`` (:func:`numpy.packbits` order, as
    :meth:`PanelStore.window_packed <vcfstore.store.reader.PanelStore.window_packed>` gives them),
    bits past the last site 0. :meth:`ExactSearcher.search` takes them as they are: its counts
    work on the packed words, and only the candidates it ranks exactly are unpacked, so a search
    holds one eighth of the window's uint8 alleles.
    """

    bits: np.ndarray
    n_sites: int

    def __post_init__(self) -> None:
        b = self.bits
        if not isinstance(b, np.ndarray) or b.dtype != np.uint8 or b.ndim != 2 or b.shape[1] != -(-self.n_sites // 8):
            got = f"{getattr(b, 'dtype', type(b).__name__)} {getattr(b, 'shape', '')}"
            raise ArgumentError(f"packed alleles must be uint8 [n_ref, {-(-self.n_sites // 8)}], not {got}")

    def __len__(self) -> int:
        return len(self.bits)

    def rows(self, idx: np.ndarray | None = None) -> np.ndarray:
        """The alleles of references ``idx`` (all by default), unpacked: uint8 [n, n_sites]."""
        bits = self.bits if idx is None else self.bits[idx]
        return np.unpackbits(bits, axis=1, count=self.n_sites)


def pack_sites(alleles: np.ndarray) -> np.ndarray:
    """Alleles [n_sites, n_haplotypes] (uint8 0/1) packed along sites: uint8 [n_haplotypes, ceil(n_sites / 8)].

    ``np.packbits(alleles, axis=0).T``, five times faster: packing along the first axis walks
    the array across rows, so here eight whole rows at a time are shifted and combined instead.
    """
    n_sites, n_hap = alleles.shape
    full = n_sites - n_sites % 8
    out = np.empty((-(-n_sites // 8), n_hap), dtype=np.uint8)
    eights = alleles[:full].reshape(full // 8, 8, n_hap)
    head, shifted = out[: full // 8], np.empty((full // 8, n_hap), dtype=np.uint8)
    np.left_shift(eights[:, 0], 7, out=head)
    for j in range(1, 8):
        head |= np.left_shift(eights[:, j], 7 - j, out=shifted)
    if full < n_sites:
        out[-1] = np.packbits(alleles[full:], axis=0)[0]
    return np.ascontiguousarray(out.T)
