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

When the per-site terms are bitwise equal at every site (a layer whose output carries no
position or AF term) the distance is ``c`` times the Hamming distance over unmasked sites and
can be counted with popcount on bit-packed alleles (``method="popcount"``); otherwise one matrix
product computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vcfstore.errors import ArgumentError, NotPositionwiseError, VcfstoreError
from vcfstore.retrieval.embedding import Embedding, embed, embedding_device, eval_mode
from vcfstore.store.vocab import layout_site_tokens

METHODS = ("auto", "matmul", "popcount")


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
    values = (vocab.mask, vocab.allele0, vocab.allele1)
    rows = layout_site_tokens(np.repeat(np.asarray(values)[:, None], n_sites, axis=1), max_seq_len, vocab)
    with eval_mode(layer):
        ref = embed(layer, rows, np.broadcast_to(ref_af, rows.shape), forward_kwargs=forward_kwargs, device=device)
        q = ref
        if query_af is not None:
            q = embed(layer, rows, np.broadcast_to(query_af, rows.shape), forward_kwargs=forward_kwargs, device=device)
    if not (bool(torch.isfinite(ref).all()) and bool(torch.isfinite(q).all())):
        raise VcfstoreError("the embedding layer returned NaN or infinite values for this window")
    ref, q = ref.double(), q.double()
    return WindowTables(n_sites, {v: q[i] for i, v in enumerate(values)}, {v: ref[i] for i, v in enumerate(values)})


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
    with eval_mode(layer):
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


def linear_form(tables: WindowTables, queries: np.ndarray, vocab: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(base [n_q], w [n_q, n_sites]) with ``d(q_i, r) = base_i + alleles(r) @ w_i``."""
    n, L = tables.n_sites, queries.shape[1]
    q = torch.as_tensor(queries, device=tables.ref[vocab.mask].device)
    t00, t01 = tables.term(vocab.allele0, vocab.allele0), tables.term(vocab.allele0, vocab.allele1)
    t10, t11 = tables.term(vocab.allele1, vocab.allele0), tables.term(vocab.allele1, vocab.allele1)
    tmm = tables.term(vocab.mask, vocab.mask)  # masked in both (SOS/EOS/pad rows are equal in every table)
    sites = q[:, 1 : n + 1]
    is1 = sites == vocab.allele1
    masked = sites == vocab.mask
    base_site = torch.where(masked, tmm[1 : n + 1], torch.where(is1, t10[1 : n + 1], t00[1 : n + 1]))
    w = torch.where(masked, 0.0, torch.where(is1, t11[1 : n + 1] - t10[1 : n + 1], t01[1 : n + 1] - t00[1 : n + 1]))
    specials = torch.cat([tmm[:1], tmm[n + 1 : L]]).sum()
    return base_site.sum(1) + specials, w


def exact_site_sums(w: torch.Tensor, alleles: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``alleles @ w.T`` as exact integer pairs: (hi, lo, g1, g2) with sum = hi g1 + lo g2, 0 <= lo < g1 / g2.

    Each ``w`` is split as ``A g1 + B g2`` (rounding at most ``g2 / 2``) with integers
    ``|A| <= 2^b`` and ``|B| <= 2^(b-1)``, ``b = 52 - ceil(log2(sites + 1))``: sums of at most
    ``sites`` of them stay below 2^53, so the float64 products are exact. ``(hi, lo)`` compare
    lexicographically as the sums do.
    """
    n_sites = w.shape[1]
    b = 52 - int(np.ceil(np.log2(n_sites + 1)))
    top = float(w.abs().max()) if w.numel() else 0.0
    exp = np.frexp(top)[1] if top > 0 else 0  # top < 2^exp
    g1, g2 = 2.0 ** (exp - b), 2.0 ** (exp - 2 * b)
    a = torch.round(w / g1)
    lo_part = torch.round((w - a * g1) / g2)  # w - a g1 is exact: |.| <= g1 / 2 on w's own grid
    r = alleles.T.to(w.dtype)
    hi, lo = (a @ r).cpu().numpy(), (lo_part @ r).cpu().numpy()
    carry = np.floor(lo / 2.0**b)  # normalise lo into [0, 2^b): exact, all values are integers below 2^53
    return hi + carry, lo - carry * 2.0**b, g1, g2


def rank_keys(hi: np.ndarray, lo: np.ndarray, k: int) -> np.ndarray:
    """Per row the indices of the ``k`` smallest ``(hi, lo)`` pairs; equal pairs by lowest index."""
    cols = np.broadcast_to(np.arange(hi.shape[1]), hi.shape)
    return np.lexsort((cols, lo, hi), axis=-1)[:, :k]


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


def hamming_constant(tables: WindowTables, vocab: Any) -> float | None:
    """``c`` if every site's terms are bitwise ``c * [a != b]`` (0 at specials), else None."""
    n = tables.n_sites
    pairs = ((vocab.allele0, vocab.allele1), (vocab.allele1, vocab.allele0))
    diff = torch.cat([tables.term(a, b)[1 : n + 1] for a, b in pairs])
    same = torch.cat([tables.term(v, v) for v in (vocab.allele0, vocab.allele1, vocab.mask)])
    c = float(diff[0])
    if c <= 0 or not bool((diff == c).all()) or bool(same.any()):
        return None
    return c


class ExactSearcher:
    """Exact K-nearest references of masked queries, from the store's alleles and the layer's tables.

    Parameters
    ----------
    layer : torch.nn.Module or callable
        A position-wise embedding (verified on first use).
    forward_kwargs : dict, optional
        Extra keyword arguments of the layer.
    device : torch device, optional
        Where to embed the table rows and compute (default: where the layer's parameters are).
    method : {"auto", "matmul", "popcount"}
        How to sum the per-site terms: ``popcount`` (Hamming distance on packed bits; only when the
        terms are bitwise equal at every site, on the CPU), ``matmul`` (exact integer sums in one
        matrix product) or ``auto`` (popcount where it applies). Both give the same result.
    """

    def __init__(
        self, layer: Embedding, forward_kwargs: dict[str, Any] | None = None, device: Any = None, method: str = "auto"
    ) -> None:
        if method not in METHODS:
            raise ArgumentError(f"method must be one of {METHODS}, not {method!r}")
        self.layer, self.forward_kwargs, self.method = layer, forward_kwargs, method
        self.device = embedding_device(layer, device)
        self._verified: set[int] = set()
        self.max_deviation = 0.0  # largest |layer output - table composition| seen by the check

    def search(
        self,
        alleles: np.ndarray,
        queries: np.ndarray,
        k: int,
        *,
        max_seq_len: int,
        vocab: Any,
        ref_af: np.ndarray,
        query_af: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Distances [n_q, k] and reference indices [n_q, k] of masked ``queries`` [n_q, L].

        ``alleles`` are the window's reference alleles [n_ref, n_sites]; ``query_af`` (one row
        [L] shared by the queries) defaults to ``ref_af``. Distances are the squared L2 distances
        between the flattened float32 embeddings, exact to the bound in the module docstring;
        equal distances go to the lowest index.
        """
        n_sites = alleles.shape[1]
        k = check_k(k, len(alleles))
        check_query_tokens(queries, n_sites, max_seq_len, vocab)
        same_af = query_af is None or np.array_equal(query_af, ref_af)
        tables = window_tables(
            self.layer,
            n_sites,
            max_seq_len,
            vocab,
            ref_af,
            None if same_af else query_af,
            self.forward_kwargs,
            self.device,
        )
        if id(self.layer) not in self._verified:
            dev = check_positionwise(self.layer, tables, max_seq_len, vocab, ref_af, self.forward_kwargs, self.device)
            self.max_deviation = max(self.max_deviation, dev)
            self._verified.add(id(self.layer))
        base, w = linear_form(tables, queries, vocab)
        c = None
        if self.method != "matmul" and self.device.type == "cpu":
            c = hamming_constant(tables, vocab)
        if self.method == "popcount" and c is None:
            raise ArgumentError(
                "method='popcount' needs per-site terms that are equal at every site (and the CPU); "
                "this layer's are not: use method='auto' or 'matmul'"
            )
        if c is not None:  # d = c * Hamming: every other term is 0
            hi = _masked_hamming(alleles, queries, n_sites, vocab).astype(np.float64)
            base, lo, g1, g2 = torch.zeros(len(queries)), np.zeros_like(hi), c, 0.0
        else:
            hi, lo, g1, g2 = exact_site_sums(w, torch.as_tensor(alleles, device=w.device))
        idx = rank_keys(hi, lo, k)
        dist = base.cpu().numpy()[:, None] + np.take_along_axis(hi, idx, 1) * g1 + np.take_along_axis(lo, idx, 1) * g2
        return np.maximum(dist, 0).astype(np.float32), idx.astype(np.int64)  # rounding can leave -1e-14


def _masked_hamming(alleles: np.ndarray, queries: np.ndarray, n_sites: int, vocab: Any) -> np.ndarray:
    """Hamming distance over each query's unmasked sites, with popcount on packed bits: [n_q, n_ref]."""
    sites = queries[:, 1 : n_sites + 1]
    q_bits = np.packbits(sites == vocab.allele1, axis=1)
    keep = np.packbits(sites != vocab.mask, axis=1)
    ref = np.packbits(alleles.astype(bool), axis=1)
    # [n_q, n_ref, n_bytes] in slices of queries to bound the temporary
    out = np.empty((len(queries), len(alleles)), dtype=np.int64)
    for s in range(0, len(queries), 16):
        x = (ref[None, :, :] ^ q_bits[s : s + 16, None, :]) & keep[s : s + 16, None, :]
        out[s : s + 16] = np.bitwise_count(x).sum(axis=2, dtype=np.int64)
    return out
