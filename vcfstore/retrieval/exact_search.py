"""The exact token-space search: no embedding index at all, for position-wise embeddings.

For a position-wise embedding ``out[p] = e_p(token_p, af_p)`` the squared L2 distance between
two flattened [L, D] embeddings is a sum of per-position terms,
``d(q, r) = sum_p ||e_p(q_p, a_p) - e_p(r_p, b_p)||^2``. References are masked where the query
is masked, so masked positions and SOS/EOS/pad add a per-query constant, and at an unmasked site
the reference's allele r_p in {0, 1} enters linearly::

    d(q, r) = base(q) + sum_p r_p * w_p(q),   w_p(q) = T_p[q_p, 1] - T_p[q_p, 0]

The tables T come from embedding a handful of constant-token rows of the window with the
current weights (eval mode), so they are always fresh. When query and reference share AF (as in
VCF-Bert) ``T_p[a, b] = c * [a != b]`` and the distance is ``c`` times the Hamming distance
over unmasked sites: computed on bit-packed alleles with popcount. Otherwise the linear form is
one matrix product. Ties: distances that are equal up to floating rounding are equal, and the
lowest haplotype index comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vcfstore.errors import NotPositionwiseError
from vcfstore.retrieval.embedding import Embedding, embed, embedding_device, eval_mode
from vcfstore.store.vocab import layout_site_tokens

# Distances equal to this relative precision are ties (FAISS computes in float32).
TIE_RTOL = 1e-5


@dataclass
class WindowTables:
    """Per-position embeddings of the tokens a window can hold, for the query and reference sides.

    ``query[v]`` and ``ref[v]`` are float64 [L, D] embeddings of a row holding token ``v`` at
    every site (v = mask, allele 0, allele 1), with SOS/EOS/pad laid out as in the window.
    """

    n_sites: int
    query: dict[int, torch.Tensor]
    ref: dict[int, torch.Tensor]


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
) -> None:
    """Embed random rows and compare with the table-composed result; raise if they differ."""
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
    scale = float(got.abs().max()) or 1.0
    err = float((got - composed).abs().max()) / scale
    if err > 1e-4:
        raise NotPositionwiseError(
            f"the embedding layer is not position-wise (an output position depends on other positions' tokens; "
            f"relative error {err:.2e}): the exact backend cannot serve it; use backend='faiss' with an IndexSet"
        )


def linear_form(tables: WindowTables, queries: np.ndarray, vocab: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(base [n_q], w [n_q, n_sites]) with ``d(q_i, r) = base_i + alleles(r) @ w_i``."""
    n, L = tables.n_sites, queries.shape[1]
    dev = tables.ref[vocab.mask].device
    q = torch.as_tensor(queries, device=dev)

    def term(qv: int, rv: int) -> torch.Tensor:  # [L]: ||e_q(qv) - e_r(rv)||^2 per position
        return ((tables.query[qv] - tables.ref[rv]) ** 2).sum(-1)

    t00, t01 = term(vocab.allele0, vocab.allele0), term(vocab.allele0, vocab.allele1)
    t10, t11 = term(vocab.allele1, vocab.allele0), term(vocab.allele1, vocab.allele1)
    tmm = term(vocab.mask, vocab.mask)  # masked in both (SOS/EOS/pad rows are equal in every table)
    sites = q[:, 1 : n + 1]
    is1 = sites == vocab.allele1
    masked = sites == vocab.mask
    base_site = torch.where(masked, tmm[1 : n + 1], torch.where(is1, t10[1 : n + 1], t00[1 : n + 1]))
    w = torch.where(masked, 0.0, torch.where(is1, t11[1 : n + 1] - t10[1 : n + 1], t01[1 : n + 1] - t00[1 : n + 1]))
    specials = torch.cat([tmm[:1], tmm[n + 1 : L]]).sum()
    return base_site.sum(1) + specials, w


def hamming_constant(tables: WindowTables, vocab: Any, rtol: float = 1e-6) -> float | None:
    """``c`` if the tables reduce to ``c * [a != b]`` at every site and 0 elsewhere, else None."""
    n = tables.n_sites

    def term(qv: int, rv: int) -> torch.Tensor:
        return ((tables.query[qv] - tables.ref[rv]) ** 2).sum(-1)

    diff = torch.cat([term(vocab.allele0, vocab.allele1)[1 : n + 1], term(vocab.allele1, vocab.allele0)[1 : n + 1]])
    same = torch.cat([term(v, v) for v in (vocab.allele0, vocab.allele1, vocab.mask)])
    c = float(diff.mean())
    if c <= 0 or float((diff - c).abs().max()) > rtol * c or float(same.abs().max()) > rtol * c:
        return None
    return c


def top_k(dist: np.ndarray, k: int, atol: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest of each row of ``dist`` [n_q, n_ref]; equal distances go to the lowest index.

    Distances within ``atol`` [n_q, 1] of each other count as equal (default: ``TIE_RTOL`` of
    each row's k-th smallest). They are quantized to that tolerance and sorted stably, so among
    equal distances the references keep their index order.
    """
    k = min(k, dist.shape[1])
    if atol is None:
        kth = np.partition(dist, k - 1, axis=1)[:, k - 1 : k]
        atol = TIE_RTOL * np.maximum(np.abs(kth), 1e-12)
    key = np.round(dist / atol)
    idx = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, idx, axis=1).astype(np.float32), idx.astype(np.int64)


class ExactSearcher:
    """Exact K-nearest references of masked queries, from the store's alleles and the layer's tables."""

    def __init__(self, layer: Embedding, forward_kwargs: dict[str, Any] | None = None, device: Any = None) -> None:
        self.layer, self.forward_kwargs = layer, forward_kwargs
        self.device = embedding_device(layer, device)
        self._verified: set[int] = set()

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
        [L] shared by the queries) defaults to ``ref_af``.
        """
        n_sites = alleles.shape[1]
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
            check_positionwise(self.layer, tables, max_seq_len, vocab, ref_af, self.forward_kwargs, self.device)
            self._verified.add(id(self.layer))
        c = hamming_constant(tables, vocab) if self.device.type == "cpu" else None
        if c is not None:
            dist = c * _masked_hamming(alleles, queries, n_sites, vocab).astype(np.float64)
        else:
            base, w = linear_form(tables, queries, vocab)
            r = torch.as_tensor(alleles, device=w.device, dtype=torch.float64)
            dist = (base[:, None] + w @ r.T).cpu().numpy()
        return top_k(dist, k)


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
