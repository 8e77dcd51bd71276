"""The exact search's counting and candidate selection on a torch device: only the candidates come back.

At a million references the counts of 48 queries are 384 MB of int32: copied to the host and
selected there they take far longer than the counting. Here the counts stay where they are
made, and what crosses back is the answer (Hamming keys) or the few candidate pairs that the
count bounds leave, which the host then ranks by their exact sums
(:meth:`ExactSearcher._bounded <vcfstore.retrieval.exact_search.ExactSearcher._bounded>`).

Counting unpacks the packed window :data:`DEVICE_CHUNK` references at a time into int8 0/1
values and multiplies them with ``torch._int_mm`` (int8 x int8 -> int32, exact) where the device
has it, else in float32 (exact too: every count is an integer below 2^24). The window's packed
bits stay on the device between searches of the same window (:class:`ResidentBits`), as the
window-grouped sampler asks for one window batch after batch.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable

import numpy as np
import torch

from vcfstore.store.packed import PackedAlleles

# References unpacked on the device at a time: int8 [chunk, sites] plus its 0/1 copy.
DEVICE_CHUNK = 131072
# Candidate pairs summed on the device at a time: float64 [pairs, 2, sites] and [pairs, sites].
PAIR_CHUNK = 8192


class ResidentBits:
    """The last searched window's packed bits on the device, reused while the same read-only array is searched.

    The host array is matched by identity through a weak reference, and only when it is not
    writeable (the window cache's arrays are not), so a changed array is never answered from a
    stale copy: a writeable array is copied for each search.
    """

    def __init__(self) -> None:
        # (host array's weak reference, device copy, device): replaced whole and read once, so a
        # thread never pairs one window's array with another's copy
        self._held: tuple[weakref.ref[np.ndarray], torch.Tensor, torch.device] | None = None

    def get(self, bits: np.ndarray, device: torch.device) -> torch.Tensor:
        """``bits`` as a uint8 tensor on ``device``: the held copy when it is of this very array."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" name one device
            device = torch.device("cuda", torch.cuda.current_device())
        held = self._held
        if held is not None and held[0]() is bits and held[2] == device:
            return held[1]
        self._held = None  # the old copy goes before the new one is made
        with warnings.catch_warnings():  # torch warns of a read-only array even when it copies it to the device
            warnings.simplefilter("ignore", UserWarning)
            out = torch.as_tensor(bits, device=device)
        if not bits.flags.writeable and out.data_ptr() != bits.ctypes.data:  # a device copy of a frozen array
            self._held = (weakref.ref(bits), out, device)
        return out

    def clear(self) -> None:
        """Drop the held copy (its device memory is freed with the last reference)."""
        self._held = None

    @property
    def nbytes(self) -> int:
        """Device bytes held between searches."""
        held = self._held
        return 0 if held is None else held[1].numel()


def _int8_product(device: torch.device) -> bool:
    # cuBLASLt's int8 product; elsewhere float32 (torch's CPU _int_mm is not faster than float32 here)
    return device.type == "cuda"


def device_counts(
    alleles: np.ndarray | PackedAlleles, lhs: np.ndarray, device: torch.device, resident: ResidentBits
) -> torch.Tensor:
    """``lhs @ alleles.T`` as int32 [len(lhs), n_ref] on ``device``, for 0/1 ``lhs`` [m, n_sites] and 0/1 alleles."""
    n_ref, int8 = len(alleles), _int8_product(device)
    packed = isinstance(alleles, PackedAlleles)
    if isinstance(alleles, PackedAlleles):
        bits = resident.get(alleles.bits, device)
        width = bits.shape[1] * 8  # unpacked to whole bytes: bits past the last site are 0
    else:
        bits, width = torch.as_tensor(alleles, device=device), alleles.shape[1]
    # cuBLASLt's int8 product wants more than 16 rows and dimensions in multiples of 8: zero padding
    m = max(32, -(-len(lhs) // 8) * 8) if int8 else len(lhs)
    k = -(-width // 8) * 8 if int8 else lhs.shape[1]
    left = torch.zeros((m, k), dtype=torch.int8 if int8 else torch.float32, device=device)
    left[: len(lhs), : lhs.shape[1]] = torch.as_tensor(lhs, device=device)
    out = torch.empty((len(lhs), n_ref), dtype=torch.int32, device=device)
    for s in range(0, n_ref, DEVICE_CHUNK):
        block = bits[s : s + DEVICE_CHUNK]
        n = len(block)
        if packed:
            block = _unpack(block)
        if int8:
            if n % 8 or width != k:
                right = torch.zeros((-(-n // 8) * 8, k), dtype=torch.int8, device=device)
                right[:n, :width] = block
            else:
                right = block.view(torch.int8)  # 0/1 values: the same bytes
            out[:, s : s + n] = torch._int_mm(left, right.T)[: len(lhs), :n]
        else:
            out[:, s : s + n] = (left @ block[:, : lhs.shape[1]].to(torch.float32).T).round_()
    return out


def _unpack(bits: torch.Tensor) -> torch.Tensor:
    """Packed bytes [n, b] as 0/1 uint8 [n, 8 b] (first site in the high bit): one shift and an in-place mask."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    return (bits[:, :, None] >> shifts).bitwise_and_(1).reshape(len(bits), -1)


def pair_sums(
    split: np.ndarray,
    alleles: np.ndarray | PackedAlleles,
    rows: np.ndarray,
    cols: np.ndarray,
    device: torch.device,
    resident: ResidentBits,
) -> np.ndarray:
    """Per pair the two integer sums ``split[rows[i]] @ alleles[cols[i]]``: float64 [n_pairs, 2], on the host.

    ``split`` [n_q, 2, n_sites] holds integers whose sums over the sites stay below 2^53
    (:func:`vcfstore.retrieval.exact_search.exact_site_sums`), so the device adds them exactly in
    any order: the host's sums, bit for bit. Pairs are summed :data:`PAIR_CHUNK` at a time.
    """
    n_sites = split.shape[2]
    lhs = torch.as_tensor(split, device=device)
    r, c = torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)
    packed = isinstance(alleles, PackedAlleles)
    if isinstance(alleles, PackedAlleles):
        src = resident.get(alleles.bits, device)
    else:
        src = torch.as_tensor(alleles, device=device)
    out = torch.empty((len(rows), 2), dtype=torch.float64, device=device)
    for s in range(0, len(rows), PAIR_CHUNK):
        refs = src[c[s : s + PAIR_CHUNK]]
        refs = (_unpack(refs) if packed else refs)[:, :n_sites].to(torch.float64)
        out[s : s + len(refs)] = torch.bmm(lhs[r[s : s + PAIR_CHUNK]], refs[:, :, None])[:, :, 0]
    return out.cpu().numpy()


def hamming_top_k(s0: torch.Tensor, s1: torch.Tensor, n_ones: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query the k references of smallest Hamming distance ``S0 - S1 + n_ones``, equal ones by lowest index.

    Returns (indices int64 [n_q, k], distances float64 [n_q, k]) on the host. One integer key,
    distance x n_ref + index, makes the order total, so the selection needs no stable sort.
    """
    n_ref = s0.shape[1]
    hamming = (s0 - s1).to(torch.int64) + torch.as_tensor(n_ones, device=s0.device)[:, None]
    key = hamming * n_ref + torch.arange(n_ref, device=s0.device)
    top = torch.topk(key, k, dim=1, largest=False, sorted=True).values.cpu().numpy()
    return top % n_ref, (top // n_ref).astype(np.float64)


def candidates(
    s0: torch.Tensor,
    s1: torch.Tensor,
    ranges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    margin: np.ndarray,
    k: int,
    proved: Callable[[np.ndarray, np.ndarray], bool],
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (rows, cols) that may hold each query's k nearest, selected on the device; rows ascending.

    First the references with ``m = S0 - S1`` at most the k-th smallest of their row, kept when
    ``proved(m_k, top)`` (:func:`vcfstore.retrieval.exact_search.count_order_proved`, given the
    k-th smallest ``m`` and the largest upper bound taken, per row) shows no other can be among
    the k nearest; else every reference whose lower bound is within the margin of the k-th
    smallest upper bound of its row.
    """
    dev = s0.device
    w0_lo, w0_hi, w1_lo, w1_hi = (torch.as_tensor(x, device=dev)[:, None] for x in ranges)
    # Temporaries are dropped as soon as they are used: with many ties every pair can survive
    # (working_bytes counts the worst case).
    m = s0 - s1
    m_k = torch.topk(m, k, dim=1, largest=False).values.max(1).values
    rows, cols = torch.nonzero(m <= m_k[:, None], as_tuple=True)
    del m
    upper = s0[rows, cols] * w0_hi[rows, 0]
    upper.addcmul_(s1[rows, cols], w1_hi[rows, 0])
    top = torch.full((len(s0),), -torch.inf, dtype=upper.dtype, device=dev).scatter_reduce(0, rows, upper, "amax")
    del upper
    m_k_top = torch.stack([m_k.to(top.dtype), top]).cpu().numpy()  # one copy back (each waits for the device)
    if not proved(m_k_top[0].astype(np.int64), m_k_top[1]):
        del rows, cols
        bound = s0 * w0_hi
        kth = torch.topk(bound.addcmul_(s1, w1_hi), k, dim=1, largest=False).values.max(1, keepdim=True).values
        torch.mul(s0, w0_lo, out=bound)
        keep = bound.addcmul_(s1, w1_lo) <= kth + torch.as_tensor(margin, device=dev)[:, None]
        del bound
        rows, cols = torch.nonzero(keep, as_tuple=True)
    return rows.cpu().numpy(), cols.cpu().numpy()


def working_bytes(n_queries: int, n_ref: int, n_sites: int) -> int:
    """An upper bound of the device memory one search takes beyond the resident packed bits.

    Per (query, reference) pair: the int32 counts (8 bytes), then at most 56 more while the
    candidates are selected, when every pair survives (int64 rows and columns of the pairs, a
    float64 bound and its gathered factors, or the int32 differences and a mask: about 50
    measured); one chunk unpacked (uint8 and int8 copies); one chunk of candidate pairs summed.
    """
    pairs = n_queries * n_ref * (8 + 56)
    chunk = min(n_ref, DEVICE_CHUNK) * -(-n_sites // 8) * 8 * 3
    sums = PAIR_CHUNK * -(-n_sites // 8) * 8 * (1 + 8 + 2 * 8)
    return pairs + chunk + sums
