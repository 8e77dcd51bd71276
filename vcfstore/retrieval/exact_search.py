"""The exact token-space search: no embedding index at all, for position-wise embeddings.

For a position-wise embedding ``out[p] = e_p(token_p, af_p)`` the squared L2 distance between
two flattened [L, D] embeddings is a sum of per-position terms,
``d(q, r) = sum_p ||e_p(q_p, a_p) - e_p(r_p, b_p)||^2``. References are masked where the query
is masked, so masked positions and SOS/EOS/pad add a per-query constant, and at an unmasked site
the reference's allele r_p in {0, 1} enters linearly::

    d(q, r) = base(q) + sum_p r_p * w_p(q),   w_p(q) = T_p[q_p, 1] - T_p[q_p, 0]

The tables T come from embedding a handful of constant-token rows of the window with the
current weights (eval mode), so they are always fresh.

Exactness, and the bound. The tables hold the layer's own float32 outputs: on kernels that do
not depend on the batch shape (torch's CPU kernels for VCF-Bert's layer: checked, bitwise) these
are the values the layer gives every row of any batch; elsewhere the one-off position-wise check
records the largest difference in :attr:`ExactSearcher.max_deviation`. Each term ``T_p[a, b]``
is computed from them in float64: the difference of two float32 values is exact in float64, and
squaring and summing D of them round by at most ``(D + 1) u T_p[a, b]`` (u = 2^-53). The sum over
sites is then exact: each ``w_p`` is split into two integers on power-of-two grids,
``w_p = A_p g1 + B_p g2 + e_p`` with ``g2 = 2^-2b max|w|`` (b = 52 - log2(sites), about 41, so
``|e_p| <= g2 / 2``, 1e-25 relative), and the integer sums ``sum_p r_p A_p`` and
``sum_p r_p B_p`` stay below 2^53, so float64 matrix products add them exactly in any order.
The ranking key ``d(q, r) - base(q)`` (base is the same for every reference) therefore differs
from its exact value for the float32 embeddings by at most
``beta = sum_p (D + 2) u (T_p[q_p, 0] + T_p[q_p, 1]) + sites * g2`` over the query's unmasked
sites: about 1e-8 at D = 192 and 1,000 sites, against a step of ``||e(0) - e(1)||^2`` (about
2 D for N(0, 1) token embeddings) for each differing site. References are ranked by the exact
integer keys: two tie only when their keys are equal, which identical alleles at the query's
unmasked sites always give, and ties go to the lowest index. Nothing is merged by a tolerance.

How the sums are found fast. A query's weights take two values per site up to rounding
(``w_p ~ +c`` where the query holds allele 0, ``~ -c`` where it holds allele 1, 0 where masked),
so counting is nearly all of the work: ``S0(q, r)`` and ``S1(q, r)``, the sites where the
reference holds allele 1 and the query allele 0 or 1, are popcounts of 64-bit words of packed
alleles (or a matrix product of 0/1 values on a GPU: exact, the counts are small integers;
the counts stay on the GPU and only the candidates come back,
:mod:`vcfstore.retrieval.device_search`). They bound every key,
``S0 min w0 + S1 min w1 <= key <= S0 max w0 + S1 max w1``;
a reference whose lower bound exceeds the K-th smallest upper bound (plus a margin far above
the bounds' rounding) cannot be among the K nearest, and only the others, usually K plus the
references tied with them, get the exact integer keys above. Ranking the survivors takes one
small sort, not a sort of every row. When the per-site terms are bitwise equal at every site (a
layer whose output carries no position or AF term) the key is ``c`` times the Hamming distance
over unmasked sites and the counts are the whole answer (``method="popcount"``).

Per window and weights version the per-site terms are computed once and cached: the weights
version comes from the layer's tensors' identities and in-place version counters
(:meth:`WeightsIdentity.version <vcfstore.retrieval.embedding.WeightsIdentity.version>`), so an
optimiser step or ``load_state_dict`` is seen without hashing anything; the training path hands
the table it embeds for composition to :meth:`ExactSearcher.prime` so it is not embedded twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vcfstore.errors import ArgumentError, NotPositionwiseError, VcfstoreError
from vcfstore.retrieval import device_search
from vcfstore.retrieval.embedding import (
    Embedding,
    WeightsIdentity,
    embed,
    embedding_device,
    eval_mode,
    single_threaded,
)
from vcfstore.retrieval.popcount import pack_words, popcount_and, words_of
from vcfstore.store.packed import PackedAlleles
from vcfstore.store.vocab import layout_site_tokens

METHODS = ("auto", "matmul", "popcount")
ENGINES = ("auto", "numpy", "torch")
# Windows of per-site terms kept per weights version (a few [L] float64 vectors each).
TERMS_CACHE_WINDOWS = 64
# Relative margin of the candidate bounds: far above their float64 rounding (a few 1e-16), far below a site's step.
BOUND_MARGIN = 1e-9
# Columns whose k-th smallest value bounds a row's before the row is searched (smallest_pairs).
SELECT_HEAD = 4096
# References converted to float64 at a time for the exact sums of every reference (8 bytes a site each).
EXACT_BLOCK = 2048


@dataclass
class WindowTables:
    """Per-position embeddings of the tokens a window can hold, for the query and reference sides.

    ``query[v]`` and ``ref[v]`` are float64 [L, D] copies of the float32 embeddings of a row
    holding token ``v`` at every site (v = mask, allele 0, allele 1), with SOS/EOS/pad laid out as
    in the window.
    """

    n_sites: int
    query: dict[int, torch.Tensor]
    ref: dict[int, torch.Tensor]

    @property
    def dim(self) -> int:
        return int(self.ref[next(iter(self.ref))].shape[-1])

    def term(self, qv: int, rv: int) -> torch.Tensor:
        """[L]: ``||e_q(qv) - e_r(rv)||^2`` per position, in float64."""
        return ((self.query[qv] - self.ref[rv]) ** 2).sum(-1)

    @classmethod
    def from_rows(
        cls, n_sites: int, vocab: Any, ref_rows: torch.Tensor, query_rows: torch.Tensor | None = None
    ) -> WindowTables:
        """Tables from the embeddings [3, L, D] of :func:`table_rows` (query side: the reference's by default)."""
        check_finite(ref_rows, query_rows)
        ref = ref_rows.detach().double()
        q = ref if query_rows is None else query_rows.detach().double()
        values = (vocab.mask, vocab.allele0, vocab.allele1)
        return cls(n_sites, {v: q[i] for i, v in enumerate(values)}, {v: ref[i] for i, v in enumerate(values)})


def check_finite(*rows: torch.Tensor | None) -> None:
    """Refuse table rows holding NaN or infinite values."""
    if not all(bool(torch.isfinite(t).all()) for t in rows if t is not None):
        raise VcfstoreError("the embedding layer returned NaN or infinite values for this window")


def table_rows(n_sites: int, max_seq_len: int, vocab: Any, values: tuple[int, ...] | None = None) -> np.ndarray:
    """Tokens [len(values), L] of rows holding one token at every site, laid out as a window.

    ``values`` defaults to the mask, allele 0 and allele 1 (:func:`allele_rows`: the two alleles).
    """
    v = np.asarray(values if values is not None else (vocab.mask, vocab.allele0, vocab.allele1))
    return layout_site_tokens(np.repeat(v[:, None], n_sites, axis=1), max_seq_len, vocab)


def allele_rows(n_sites: int, max_seq_len: int, vocab: Any) -> np.ndarray:
    """Tokens [2, L] of the rows holding allele 0 and allele 1 at every site: all a complete row can hold."""
    return table_rows(n_sites, max_seq_len, vocab, (vocab.allele0, vocab.allele1))


@torch.no_grad()
def window_tables(
    layer: Embedding,
    n_sites: int,
    max_seq_len: int,
    vocab: Any,
    ref_af: np.ndarray,
    query_af: np.ndarray | None,
    forward_kwargs: dict[str, Any] | None,
    device: torch.device,
) -> WindowTables:
    """Embed the constant-token rows of a window (eval mode, no dropout)."""
    rows = table_rows(n_sites, max_seq_len, vocab)
    with eval_mode(layer), single_threaded():
        ref = embed(layer, rows, np.broadcast_to(ref_af, rows.shape), forward_kwargs=forward_kwargs, device=device)
        q = None
        if query_af is not None:
            q = embed(layer, rows, np.broadcast_to(query_af, rows.shape), forward_kwargs=forward_kwargs, device=device)
    return WindowTables.from_rows(n_sites, vocab, ref, q)


@dataclass(frozen=True)
class SiteTerms:
    """What a search needs of a window's tables: the per-position terms ``||e_q(a) - e_r(b)||^2``, float64 [L].

    ``t[a][b]`` for a, b in {0, 1} (alleles) and ``mm`` for a position masked in both.
    """

    n_sites: int
    t00: np.ndarray
    t01: np.ndarray
    t10: np.ndarray
    t11: np.ndarray
    mm: np.ndarray

    @classmethod
    def from_allele_rows(cls, n_sites: int, rows: torch.Tensor) -> SiteTerms:
        """The terms when queries and references share their AF, from the embeddings [2, L, D] of :func:`allele_rows`.

        Then both sides have one table: a token's term with itself is 0 (masked positions and
        SOS/EOS/pad included) and ``t01 = t10 = ||e(0) - e(1)||^2``, so the mask row is not needed.
        """
        check_finite(rows)
        r = rows.detach().double()
        diff = ((r[0] - r[1]) ** 2).sum(-1).cpu().numpy()
        zero = np.zeros_like(diff)
        return cls(n_sites, zero, diff, diff, zero, zero)

    @classmethod
    def from_tables(cls, tables: WindowTables, vocab: Any) -> SiteTerms:
        a0, a1 = vocab.allele0, vocab.allele1
        pairs = ((a0, a0), (a0, a1), (a1, a0), (a1, a1), (vocab.mask, vocab.mask))
        return cls(tables.n_sites, *(tables.term(q, r).cpu().numpy() for q, r in pairs))

    def hamming_constant(self) -> float | None:
        """``c`` if every site's terms are bitwise ``c * [a != b]`` (0 at specials), else None."""
        n = self.n_sites
        diff = np.concatenate([self.t01[1 : n + 1], self.t10[1 : n + 1]])
        c = float(diff[0])
        if c <= 0 or not (diff == c).all() or any(t.any() for t in (self.t00, self.t11, self.mm)):
            return None
        return c


@torch.no_grad()
def check_positionwise(
    layer: Embedding,
    tables: WindowTables,
    max_seq_len: int,
    vocab: Any,
    ref_af: np.ndarray,
    forward_kwargs: dict[str, Any] | None,
    device: torch.device,
    *,
    rows: int = 4,
    seed: int = 0,
) -> float:
    """Embed random rows and compare with the table-composed result; raise if they differ.

    Returns the largest absolute difference (0.0 where the layer's kernels do not depend on
    the batch, as on torch's CPU kernels).
    """
    rng = np.random.default_rng(seed)
    n = tables.n_sites
    site_tokens = rng.choice([vocab.mask, vocab.allele0, vocab.allele1], size=(rows, n))
    tokens = layout_site_tokens(site_tokens, max_seq_len, vocab)
    with eval_mode(layer), single_threaded():
        got = embed(layer, tokens, np.broadcast_to(ref_af, tokens.shape), forward_kwargs=forward_kwargs, device=device)
    got = got.double()
    composed = tables.ref[vocab.mask].expand(rows, -1, -1).clone()
    t = torch.as_tensor(tokens, device=composed.device)
    for v in (vocab.allele0, vocab.allele1):
        composed = torch.where((t == v)[..., None], tables.ref[v], composed)
    diff = float((got - composed).abs().max())
    scale = float(got.abs().max()) or 1.0
    if diff / scale > 1e-4:
        raise NotPositionwiseError(
            f"the embedding layer is not position-wise (an output position depends on other positions' tokens; "
            f"relative error {diff / scale:.2e}): the exact backend cannot serve it; "
            "use backend='faiss' with an IndexSet"
        )
    return diff


def check_query_tokens(queries: np.ndarray, n_sites: int, max_seq_len: int, vocab: Any) -> None:
    """Raise :class:`ArgumentError` unless ``queries`` [n, L] are laid out as the window's rows are.

    Sites (1..n_sites) may hold only the mask or an allele token; position 0 must be SOS, position
    ``n_sites + 1`` EOS and the rest padding, as :meth:`PanelStore.window_tokens` lays them out.
    """
    if queries.ndim != 2 or queries.shape[1] != max_seq_len:
        raise ArgumentError(f"query tokens have shape {queries.shape}; expected [n, {max_seq_len}]")
    if len(queries) == 0:
        raise ArgumentError("no query rows: the batch is empty")
    sites = queries[:, 1 : n_sites + 1]
    bad = (sites != vocab.mask) & (sites != vocab.allele0) & (sites != vocab.allele1)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ArgumentError(
            f"query row {r} holds token {int(sites[r, c])} at site position {c + 1}: sites may hold only "
            f"the mask ({vocab.mask}) or allele tokens ({vocab.allele0}, {vocab.allele1})"
        )
    expect = layout_site_tokens(np.full((1, n_sites), vocab.mask), max_seq_len, vocab)[0]
    special = np.ones(max_seq_len, dtype=bool)
    special[1 : n_sites + 1] = False
    wrong = queries[:, special] != expect[special]
    if wrong.any():
        r, c = np.argwhere(wrong)[0]
        p = int(np.flatnonzero(special)[c])
        raise ArgumentError(
            f"query row {r} holds token {int(queries[r, p])} at position {p}, expected {int(expect[p])}: "
            f"rows must be laid out [SOS] {n_sites} sites [EOS] padding"
        )


def check_k(k: Any, n_ref: int) -> int:
    """``k`` as an int in [1, n_ref], or an :class:`ArgumentError`."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ArgumentError(f"k must be an integer, not {type(k).__name__} {k!r}")
    if not 1 <= k <= n_ref:
        raise ArgumentError(f"k must be in [1, {n_ref}], not {k}")
    return int(k)


def linear_form(terms: SiteTerms, queries: np.ndarray, vocab: Any) -> tuple[np.ndarray, np.ndarray]:
    """(base [n_q], w [n_q, n_sites]) in float64 with ``d(q_i, r) = base_i + alleles(r) @ w_i``."""
    n, L = terms.n_sites, queries.shape[1]
    sites = queries[:, 1 : n + 1]
    is1 = sites == vocab.allele1
    masked = sites == vocab.mask
    s = slice(1, n + 1)
    base_site = np.where(masked, terms.mm[s], np.where(is1, terms.t10[s], terms.t00[s]))
    w = np.where(masked, 0.0, np.where(is1, terms.t11[s] - terms.t10[s], terms.t01[s] - terms.t00[s]))
    specials = terms.mm[0] + terms.mm[n + 1 : L].sum()  # SOS/EOS/pad rows are equal in every table
    return base_site.sum(1) + specials, w


def _integer_split(w: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """``w`` [n_q, n_sites] on two power-of-two grids: (A and B stacked [n_q, 2, n_sites], g1, g2, b)."""
    n_sites = w.shape[1]
    b = 52 - int(np.ceil(np.log2(n_sites + 1)))
    top = float(np.abs(w).max()) if w.size else 0.0
    exp = np.frexp(top)[1] if top > 0 else 0  # top < 2^exp
    g1, g2 = 2.0 ** (exp - b), 2.0 ** (exp - 2 * b)
    a = np.round(w / g1)
    lo_part = np.round((w - a * g1) / g2)  # w - a g1 is exact: |.| <= g1 / 2 on w's own grid
    return np.stack([a, lo_part], axis=1), g1, g2, b


def _normalise(hi: np.ndarray, lo: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    carry = np.floor(lo / 2.0**b)  # normalise lo into [0, 2^b): exact, all values are integers below 2^53
    return hi + carry, lo - carry * 2.0**b


def exact_site_sums(w: np.ndarray, alleles: np.ndarray | PackedAlleles) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``alleles @ w.T`` as exact integer pairs: (hi, lo, g1, g2) with sum = hi g1 + lo g2, 0 <= lo < g1 / g2.

    Each ``w`` is split as ``A g1 + B g2`` (rounding at most ``g2 / 2``) with integers
    ``|A| <= 2^b`` and ``|B| <= 2^(b-1)``, ``b = 52 - ceil(log2(sites + 1))``: sums of at most
    ``sites`` of them stay below 2^53, so the float64 products are exact. ``(hi, lo)`` compare
    lexicographically as the sums do. The grids depend only on ``w``, so the sums of any subset
    of references (:func:`exact_pair_sums`) are those of the whole set. References are converted
    to float64 ``EXACT_BLOCK`` at a time, so the temporaries do not grow with the panel.
    """
    split, g1, g2, b = _integer_split(w)
    lhs = torch.from_numpy(split.reshape(-1, w.shape[1]))
    prod = np.empty((len(lhs), len(alleles)))
    for s in range(0, len(alleles), EXACT_BLOCK):
        r = torch.from_numpy(_unpacked(alleles, np.arange(s, min(len(alleles), s + EXACT_BLOCK))))
        # torch's float64 product (the sums are exact in any order); NumPy's BLAS threads stall on a busy machine
        prod[:, s : s + len(r)] = (lhs @ r.to(torch.float64).T).numpy()
    pairs = prod.reshape(len(w), 2, -1)
    hi, lo = _normalise(pairs[:, 0], pairs[:, 1], b)
    return hi, lo, g1, g2


def distinct_rows(alleles: np.ndarray | PackedAlleles, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct allele rows among references ``cols``: (one reference of each, each col's row number).

    References with identical alleles have identical sums for every query, whatever its mask: in
    a large panel the candidates tied with the K-th are mostly copies of a few haplotypes (at
    200,000 msprime haplotypes and 1,026 sites: 132,369 pairs of 79,399 references, 219 rows).
    """
    uc, inverse = np.unique(cols, return_inverse=True)
    bits = alleles.bits[uc] if isinstance(alleles, PackedAlleles) else np.packbits(alleles[uc], axis=1)
    keys = np.ascontiguousarray(bits).view(np.dtype((np.void, max(1, bits.shape[1])))).ravel()
    _, first, group = np.unique(keys, return_index=True, return_inverse=True)
    return uc[first], group.ravel()[inverse]


def exact_pair_sums(
    w: np.ndarray,
    alleles: np.ndarray | PackedAlleles,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    device: torch.device | None = None,
    resident: device_search.ResidentBits | None = None,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """:func:`exact_site_sums` for the pairs (query ``rows[i]``, reference ``cols[i]``) only: hi, lo [n_pairs].

    On the host the sums are taken once per distinct allele row among the candidates
    (:func:`distinct_rows`) for every query, the rows unpacked and converted ``EXACT_BLOCK`` at a
    time (so the temporaries stay within :meth:`ExactSearcher.working_bytes`). With ``device``
    they are taken there, pair by pair (:func:`vcfstore.retrieval.device_search.pair_sums`, the
    packed bits held in ``resident``): the same integers.
    """
    split, g1, g2, b = _integer_split(w)
    if device is not None:
        out = device_search.pair_sums(split, alleles, rows, cols, device, resident or device_search.ResidentBits())
    else:
        reps, group = distinct_rows(alleles, cols)
        lhs = torch.from_numpy(split.reshape(-1, w.shape[1]))
        sums = np.empty((len(reps), len(w), 2))  # every query's pair of sums for each distinct row
        for s in range(0, len(reps), EXACT_BLOCK):  # unpacked and converted EXACT_BLOCK rows at a time
            refs = torch.from_numpy(_unpacked(alleles, reps[s : s + EXACT_BLOCK])).to(torch.float64)
            sums[s : s + len(refs)] = (refs @ lhs.T).numpy().reshape(len(refs), len(w), 2)
        out = sums[group, rows]
    hi, lo = _normalise(out[:, 0], out[:, 1], b)
    return hi, lo, g1, g2


def _first_k(rows: np.ndarray, cols: np.ndarray, hi: np.ndarray, lo: np.ndarray, k: int, n_rows: int) -> np.ndarray:
    """Positions in the pair arrays of each row's k smallest ``(hi, lo)``, equal pairs by lowest column.

    ``rows`` are the pairs' row numbers (every row has at least k pairs).
    """
    order = np.lexsort((cols, lo, hi, rows))
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(counts) - counts
    return order[starts[:, None] + np.arange(k)]


def smallest_pairs(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``x`` [n, m] its k-th smallest value, and the entries (rows, cols) at most that, rows ascending.

    Exact, without partitioning every row whole: the k-th smallest of a row's first
    ``SELECT_HEAD`` columns is at least the row's own, so the entries at most it hold the row's k
    smallest; the k-th is then found among those few. Rows whose head is unlike the rest (more
    than an eighth of all entries pass) are partitioned whole instead.
    """
    n, m = x.shape
    head = max(k, SELECT_HEAD)
    if 4 * head <= m:
        bound = np.partition(x[:, :head], k - 1, axis=1)[:, k - 1]
        rows, cols = np.nonzero(x <= bound[:, None])
        if 8 * len(rows) <= x.size:
            vals = x[rows, cols]
            order = np.lexsort((vals, rows))
            counts = np.bincount(rows, minlength=n)
            kth = vals[order[np.cumsum(counts) - counts + k - 1]]
            keep = vals <= kth[rows]
            return kth, rows[keep], cols[keep]
    kth = np.partition(x, k - 1, axis=1)[:, k - 1]
    rows, cols = np.nonzero(x <= kth[:, None])
    return kth, rows, cols


def rank_keys(hi: np.ndarray, lo: np.ndarray, k: int) -> np.ndarray:
    """Per row the indices of the ``k`` smallest ``(hi, lo)`` pairs; equal pairs by lowest index.

    A partial selection: the k-th smallest ``hi`` of each row bounds the candidates, and only
    those (k and the entries tied with the k-th) are sorted.
    """
    _, rows, cols = smallest_pairs(hi, k)
    pick = _first_k(rows, cols, hi[rows, cols], lo[rows, cols], k, len(hi))
    return cols[pick]


def top_k(dist: np.ndarray, k: int, atol: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest of each row of ``dist`` [n_q, n_ref]; equal distances go to the lowest index.

    Two distances tie when they are equal, or, with ``atol`` ([n_q, 1] or a scalar: the rounding
    bound of the computation that produced ``dist``), when a chain of gaps of at most ``atol``
    joins them. Tied distances keep their index order.

    Returns
    -------
    (distances float32 [n_q, k], indices int64 [n_q, k])
    """
    k = check_k(k, dist.shape[1])
    order = np.argsort(dist, axis=1, kind="stable")  # stable: equal distances in index order
    d_sorted = np.take_along_axis(dist, order, axis=1)
    tol = 0.0 if atol is None else np.broadcast_to(np.asarray(atol, dtype=np.float64), (len(dist), 1))
    group = np.concatenate([np.zeros((len(dist), 1)), np.cumsum(np.diff(d_sorted, axis=1) > tol, axis=1)], axis=1)
    pos = np.lexsort((order, group), axis=-1)[:, :k]
    idx = np.take_along_axis(order, pos, axis=1)
    return np.take_along_axis(dist, idx, axis=1).astype(np.float32), idx.astype(np.int64)


# --- counting ---------------------------------------------------------------------------------


def _unpacked(alleles: np.ndarray | PackedAlleles, idx: np.ndarray | None = None) -> np.ndarray:
    if isinstance(alleles, PackedAlleles):
        return alleles.rows(idx)
    return alleles if idx is None else alleles[idx]


def allele_counts(
    alleles: np.ndarray | PackedAlleles,
    q0: np.ndarray,
    q1: np.ndarray,
    *,
    engine: str = "numpy",
    device: Any = "cpu",
    resident: device_search.ResidentBits | None = None,
) -> tuple[Any, Any]:
    """``(S0, S1)`` [n_q, n_ref]: sites where the reference holds allele 1 and the query allele 0 (``q0``) or 1.

    ``alleles`` are uint8 [n_ref, n_sites] or :class:`PackedAlleles`; ``q0``, ``q1`` are boolean
    [n_q, n_sites] (both False where masked). ``engine="numpy"`` counts with popcount on 64-bit
    words (:func:`vcfstore.retrieval.popcount.popcount_and`, on the CPU's threads) and gives int32
    arrays; ``"torch"`` counts with a matrix product of 0/1 values on ``device``
    (:func:`vcfstore.retrieval.device_search.device_counts`) and gives int32 tensors there, the
    packed bits held in ``resident`` between searches. Both give the same integers. Queries
    sharing one mask (a window-grouped batch) need only ``S1`` per pair: ``S0`` is then the
    reference's count over the unmasked sites less ``S1``.
    """
    keep = q0 | q1
    shared = bool((keep == keep[:1]).all())
    lhs = np.concatenate([q1, keep[:1] if shared else q0])  # one pass over the references counts both
    prod: Any
    if engine == "torch":
        prod = device_search.device_counts(alleles, lhs, torch.device(device), resident or device_search.ResidentBits())
    else:
        words = words_of(alleles.bits) if isinstance(alleles, PackedAlleles) else pack_words(alleles)
        prod = popcount_and(pack_words(lhs), words).astype(np.int32, copy=False)
    s1, rest = prod[: len(q1)], prod[len(q1) :]
    return (rest - s1 if shared else rest), s1


def _weight_range(w: np.ndarray, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row the smallest and largest ``w`` over the selected sites (0, 0 where none is selected)."""
    lo = np.where(sel, w, np.inf).min(1)
    hi = np.where(sel, w, -np.inf).max(1)
    none = ~sel.any(1)
    lo[none], hi[none] = 0.0, 0.0
    return lo, hi


def count_order_proved(
    m_k: np.ndarray,
    top: np.ndarray,
    *,
    q0: np.ndarray,
    q1: np.ndarray,
    ranges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    margin: np.ndarray,
) -> bool:
    """Whether the references with ``m = S0 - S1`` at most each row's k-th smallest ``m_k`` hold its k nearest.

    For keys that follow ``m`` (weights near +c and -c): ``top`` [n_q] is the largest upper bound
    among the references taken. Every other reference has ``m >= m_k + 1`` and ``S0 + S1 <= S``
    (the query's unmasked sites), so its key is at least
    ``(m_k + 1)(w0_lo - w1_lo) / 2 + min(0, S (w0_lo + w1_lo) / 2)``, which must exceed ``top``
    (each side widened by the margin) in every row.
    """
    w0_lo, _, w1_lo, _ = ranges
    unmasked = (q0 | q1).sum(1)
    floor = (m_k + 1) * (w0_lo - w1_lo) / 2 + np.minimum(0.0, unmasked * (w0_lo + w1_lo) / 2)
    return bool(((w0_lo > w1_lo) & (floor - margin > top + margin)).all())


def host_candidates(
    s0: np.ndarray,
    s1: np.ndarray,
    ranges: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    margin: np.ndarray,
    k: int,
    proved: Callable[[np.ndarray, np.ndarray], bool],
) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (rows, cols) that may hold each query's k nearest; rows ascending.

    First the references with ``m = S0 - S1`` at most the k-th smallest ``m_k`` of their row (an
    integer partition, no bound computed for every reference), kept when ``proved(m_k, top)``
    (:func:`count_order_proved`); else the bounds of every reference, and those whose lower bound
    is within the margin of the k-th smallest upper bound of their row.
    :func:`vcfstore.retrieval.device_search.candidates` does the same where the counts are on a device.
    """
    w0_lo, w0_hi, w1_lo, w1_hi = ranges
    m_k, rows, cols = smallest_pairs(s0 - s1, k)
    upper = s0[rows, cols] * w0_hi[rows] + s1[rows, cols] * w1_hi[rows]
    starts = np.searchsorted(rows, np.arange(len(s0)))  # every row has at least k pairs
    if proved(m_k, np.maximum.reduceat(upper, starts)):
        return rows, cols
    upper = s0 * w0_hi[:, None] + s1 * w1_hi[:, None]
    kth = np.partition(upper, k - 1, axis=1)[:, k - 1 : k]
    lower = s0 * w0_lo[:, None] + s1 * w1_lo[:, None]
    rows, cols = np.nonzero(lower <= kth + margin[:, None])  # at least the k smallest upper bounds a row
    return rows, cols


class ExactSearcher:
    """Exact K-nearest references of masked queries, from the store's alleles and the layer's tables.

    Parameters
    ----------
    layer : torch.nn.Module or callable
        A position-wise embedding (verified on first use).
    forward_kwargs : dict, optional
        Extra keyword arguments of the layer.
    device : torch device, optional
        Where to embed the table rows (default: where the layer's parameters are).
    method : {"auto", "matmul", "popcount"}
        How to sum the per-site terms: ``popcount`` (Hamming distance on packed bits; only when the
        terms are bitwise equal at every site), ``matmul`` (exact integer sums for every
        reference in one matrix product) or ``auto`` (popcount where it applies, else popcount
        bounds and exact sums for the candidates they leave). All give the same result.
    engine : {"auto", "numpy", "torch"}
        How to count: popcount on 64-bit words on the CPU (a compiled kernel on NumPy arrays), or a
        matrix product in torch on ``device``, where the candidates are then selected too (an
        int8 product on CUDA; :mod:`vcfstore.retrieval.device_search`); ``auto`` takes torch where
        the layer is on a GPU. Both give the same counts and the same result.
    weights : WeightsIdentity, optional
        Identifies the layer's weights for the per-window cache (a :class:`Retriever` passes its own).
    """

    def __init__(
        self,
        layer: Embedding,
        forward_kwargs: dict[str, Any] | None = None,
        device: Any = None,
        method: str = "auto",
        *,
        engine: str = "auto",
        weights: WeightsIdentity | None = None,
    ) -> None:
        if method not in METHODS:
            raise ArgumentError(f"method must be one of {METHODS}, not {method!r}")
        if engine not in ENGINES:
            raise ArgumentError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.layer, self.forward_kwargs, self.method = layer, forward_kwargs, method
        self.device = embedding_device(layer, device)
        self.engine = engine if engine != "auto" else ("numpy" if self.device.type == "cpu" else "torch")
        self.weights = weights or WeightsIdentity(layer, forward_kwargs)
        # With the torch engine: the last window's packed bits, kept on the device between searches.
        self.resident = device_search.ResidentBits()
        self._verified: set[int] = set()
        self.max_deviation = 0.0  # largest |layer output - table composition| seen by the check
        self._terms: dict[Hashable, SiteTerms] = {}
        self._terms_version: Hashable | None = None

    # --- the per-window terms ---------------------------------------------------------------
    @staticmethod
    def _key(n_sites: int, max_seq_len: int, vocab: Any, ref_af: np.ndarray, query_af: np.ndarray | None) -> Hashable:
        qaf = None if query_af is None else np.asarray(query_af, dtype=np.float32).tobytes()
        return (n_sites, max_seq_len, vocab, np.asarray(ref_af, dtype=np.float32).tobytes(), qaf)

    def _cached(self, key: Hashable) -> SiteTerms | None:
        version = self.weights.version()
        if version is None or version != self._terms_version:
            self._terms.clear()  # only the current weights' terms are kept
            self._terms_version = version
            return None
        return self._terms.get(key)

    def _store(self, key: Hashable, terms: SiteTerms) -> None:
        if self._terms_version is None:
            return  # weights that cannot be seen: nothing is cached
        while len(self._terms) >= TERMS_CACHE_WINDOWS:
            del self._terms[next(iter(self._terms))]
        self._terms[key] = terms

    def _verify(self, n_sites: int, max_seq_len: int, vocab: Any, ref_af: np.ndarray) -> None:
        """The one-off position-wise check of the layer (on this window's full tables)."""
        if id(self.layer) not in self._verified:
            args = (max_seq_len, vocab, ref_af)
            tables = window_tables(self.layer, n_sites, *args, None, self.forward_kwargs, self.device)
            dev = check_positionwise(self.layer, tables, *args, self.forward_kwargs, self.device)
            self.max_deviation = max(self.max_deviation, dev)
            self._verified.add(id(self.layer))

    def site_terms(
        self, n_sites: int, max_seq_len: int, vocab: Any, ref_af: np.ndarray, query_af: np.ndarray | None = None
    ) -> SiteTerms:
        """The window's per-site terms for the current weights (cached per window and weights version).

        Queries with the references' AF need only the two allele rows embedded; other AFs need
        the mask, allele 0 and allele 1 rows under both.
        """
        key = self._key(n_sites, max_seq_len, vocab, ref_af, query_af)
        terms = self._cached(key)
        if terms is None:
            self._verify(n_sites, max_seq_len, vocab, ref_af)
            if query_af is None:
                rows = allele_rows(n_sites, max_seq_len, vocab)
                with torch.no_grad(), eval_mode(self.layer), single_threaded():
                    emb = embed(
                        self.layer,
                        rows,
                        np.broadcast_to(ref_af, rows.shape),
                        forward_kwargs=self.forward_kwargs,
                        device=self.device,
                    )
                terms = SiteTerms.from_allele_rows(n_sites, emb)
            else:
                tables = window_tables(
                    self.layer, n_sites, max_seq_len, vocab, ref_af, query_af, self.forward_kwargs, self.device
                )
                terms = SiteTerms.from_tables(tables, vocab)
            self._store(key, terms)
        return terms

    def prime(self, rows: torch.Tensor, n_sites: int, max_seq_len: int, vocab: Any, ref_af: np.ndarray) -> None:
        """Cache a window's terms from the embeddings [2, L, D] of :func:`allele_rows` under ``ref_af``.

        For the training path, which embeds those rows (with gradients, in eval mode) to compose
        the retrieved embeddings: the search then needs no embedding of its own. ``rows`` must
        come from the layer's current weights.
        """
        key = self._key(n_sites, max_seq_len, vocab, ref_af, None)
        if self._cached(key) is None:
            self._verify(n_sites, max_seq_len, vocab, ref_af)
            self._store(key, SiteTerms.from_allele_rows(n_sites, rows))

    @staticmethod
    def working_bytes(n_queries: int, n_ref: int, n_sites: int) -> int:
        """An upper bound of the search's temporaries for references given packed (as the window cache holds them).

        Per (query, reference) pair the counts, bounds and exact sums; the window's 64-bit words
        (a padded copy, and the packing of uint8 references); references unpacked and converted
        to float64 ``EXACT_BLOCK`` at a time; per query site a few float64 rows.
        """
        pairs = n_queries * n_ref * (8 + 1 + 2 * 4 + 2 * 4 + 4 * 8 + 1 + 4 * 8)
        words = 2 * n_ref * -(-n_sites // 64) * 8
        block = min(n_ref, EXACT_BLOCK) * n_sites * (1 + 8)
        return pairs + words + block + n_queries * n_sites * 8 * 6

    # --- the search -------------------------------------------------------------------------
    def search(
        self,
        alleles: np.ndarray | PackedAlleles,
        queries: np.ndarray,
        k: int,
        *,
        max_seq_len: int,
        vocab: Any,
        ref_af: np.ndarray,
        query_af: np.ndarray | None = None,
        validate: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances [n_q, k] and reference indices [n_q, k] of masked ``queries`` [n_q, L].

        ``alleles`` are the window's reference alleles, uint8 [n_ref, n_sites] or
        :class:`PackedAlleles` (the same result from an eighth of the memory); ``query_af`` (one row
        [L] shared by the queries) defaults to ``ref_af``. Distances are the squared L2 distances
        between the flattened float32 embeddings, exact to the bound in the module docstring;
        equal distances go to the lowest index. ``validate=False`` skips the check of the query
        tokens' layout (for a caller that has checked them).
        """
        n_sites = alleles.n_sites if isinstance(alleles, PackedAlleles) else alleles.shape[1]
        k = check_k(k, len(alleles))
        if validate:
            check_query_tokens(queries, n_sites, max_seq_len, vocab)
        same_af = query_af is None or np.array_equal(query_af, ref_af)
        terms = self.site_terms(n_sites, max_seq_len, vocab, ref_af, None if same_af else query_af)
        base, w = linear_form(terms, queries, vocab)
        c = terms.hamming_constant() if self.method != "matmul" else None
        if self.method == "popcount" and c is None:
            raise ArgumentError(
                "method='popcount' needs per-site terms that are equal at every site; "
                "this layer's are not: use method='auto' or 'matmul'"
            )
        if self.method == "matmul":
            hi, lo, g1, g2 = exact_site_sums(w, alleles)
            idx = rank_keys(hi, lo, k)
            hi, lo = np.take_along_axis(hi, idx, 1), np.take_along_axis(lo, idx, 1)
        else:
            sites = queries[:, 1 : n_sites + 1]
            q0, q1 = sites == vocab.allele0, sites == vocab.allele1
            s0, s1 = allele_counts(alleles, q0, q1, engine=self.engine, device=self.device, resident=self.resident)
            if c is not None:  # d = c * Hamming over unmasked sites: every other term is 0
                if isinstance(s0, torch.Tensor):
                    idx, hi = device_search.hamming_top_k(s0, s1, q1.sum(1), k)
                else:
                    hamming = (s0 - s1 + q1.sum(1, keepdims=True)).astype(np.float64)
                    idx = rank_keys(hamming, np.zeros_like(hamming), k)
                    hi = np.take_along_axis(hamming, idx, 1)
                lo, g1, g2 = np.zeros(idx.shape), c, 0.0
                base = np.zeros(len(queries))
            else:
                idx, hi, lo, g1, g2 = self._bounded(alleles, w, q0, q1, s0, s1, k, self.resident)
        dist = base[:, None] + hi * g1 + lo * g2
        return np.maximum(dist, 0).astype(np.float32), idx.astype(np.int64)  # rounding can leave -1e-14

    @staticmethod
    def _bounded(
        alleles: np.ndarray | PackedAlleles,
        w: np.ndarray,
        q0: np.ndarray,
        q1: np.ndarray,
        s0: Any,
        s1: Any,
        k: int,
        resident: device_search.ResidentBits | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """Exact ranking of the references the count bounds leave: (indices, hi, lo [n_q, k], g1, g2).

        The counts ``s0``, ``s1`` are arrays, or tensors on the device that made them: the
        candidates are then selected and summed there (``resident`` holds the window's bits).
        """
        w0_lo, w0_hi = _weight_range(w, q0)
        w1_lo, w1_hi = _weight_range(w, q1)
        ranges = (w0_lo, w0_hi, w1_lo, w1_hi)
        margin = BOUND_MARGIN * w.shape[1] * np.abs(w).max(1) + np.finfo(np.float64).tiny
        proved = functools.partial(count_order_proved, q0=q0, q1=q1, ranges=ranges, margin=margin)
        if isinstance(s0, torch.Tensor):  # counted on a device: selected and summed there
            rows, cols = device_search.candidates(s0, s1, ranges, margin, k, proved)
            hi, lo, g1, g2 = exact_pair_sums(w, alleles, rows, cols, device=s0.device, resident=resident)
        else:
            rows, cols = host_candidates(s0, s1, ranges, margin, k, proved)
            if len(rows) * 4 < s0.size:  # few survivors (K and their ties): their sums alone
                hi, lo, g1, g2 = exact_pair_sums(w, alleles, rows, cols)
            else:
                hi_all, lo_all, g1, g2 = exact_site_sums(w, alleles)
                hi, lo = hi_all[rows, cols], lo_all[rows, cols]
        pick = _first_k(rows, cols, hi, lo, k, len(w))
        return cols[pick], hi[pick], lo[pick], g1, g2
