"""Retrieval for training: nearest reference haplotypes, then their complete embeddings.

Per batch, :meth:`Retriever.augment` finds the K references nearest to each masked query
haplotype of its window (exact token-space search, or a FAISS index set) and embeds the
retrieved complete rows now, with gradients, so nothing embedded is ever stored and nothing
goes stale when the weights change. For a position-wise layer the rows are composed from the
window's table of per-position embeddings (:mod:`vcfstore.retrieval.compose`); other layers
encode the unique retrieved rows directly.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vcfstore.errors import ArgumentError, IndexSetError, NotPositionwiseError, VcfstoreError
from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.window_cache import WindowCache
from vcfstore.retrieval import device_search
from vcfstore.retrieval.compose import ComposePlan, Composer
from vcfstore.retrieval.embedding import (
    Embedding,
    WeightsIdentity,
    check_pos_stated,
    embed,
    embedding_device,
    eval_mode,
    to_numpy,
)
from vcfstore.retrieval.exact_search import ExactSearcher, check_k, check_query_tokens
from vcfstore.store.reader import PanelStore

if TYPE_CHECKING:  # the index layer sits above retrieval's embedding calls; only its type is needed
    from vcfstore.index.index_set import IndexSet


def check_af(af: np.ndarray, what: str) -> np.ndarray:
    """``af`` as float32 if every value is a finite frequency in [0, 1], else an :class:`ArgumentError`."""
    a = np.asarray(af, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ArgumentError(f"{what} holds NaN or infinite allele frequencies")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ArgumentError(f"{what} holds allele frequencies outside [0, 1] (from {a.min():g} to {a.max():g})")
    return a


_Found = list[tuple[int, np.ndarray, np.ndarray]]  # per window: (window, batch rows, found [2 n, K])


class Retriever:
    """Find and embed the K nearest reference haplotypes of masked queries.

    Both backends return the exact neighbours: the K references with the smallest squared L2
    distance between flattened float32 embeddings (the query's, and the reference's masked where
    the query is masked), equal distances by lowest index. The exact backend computes them
    in token space (:mod:`vcfstore.retrieval.exact_search`); the FAISS backend takes a candidate
    net from the index and ranks it by exact float64 distances to the indexed vectors
    (:meth:`IndexSet.search_exact <vcfstore.index.IndexSet.search_exact>`).

    Parameters
    ----------
    store : PanelStore
        The reference panel.
    embedding_layer : torch.nn.Module or callable
        Called as ``layer(tokens [n, L], af=af [n, L], **forward_kwargs)`` -> [n, L, D].
    k : int
        Neighbours per query.
    backend : {"auto", "exact", "faiss"}
        ``exact`` searches in token space (position-wise layers only, verified once per layer);
        ``faiss`` searches ``index_set``; ``auto`` takes exact when the layer is position-wise,
        else FAISS.
    index_set : IndexSet, optional
        Needed by the FAISS backend. Every search checks that its window's index was built with
        this layer's current weights, these ``forward_kwargs`` and the queries' mask, and raises
        :class:`~vcfstore.errors.StaleIndexError` otherwise (the weights are hashed again only
        after one of the layer's tensors changed).
    budget : MemoryBudget, optional
        Decoded windows are cached under it, and each batch's working sets (the exact search's
        temporaries, the retrieved embeddings and their autograd graph) are admitted by it
        before they are made (:meth:`MemoryBudget.reserve`).
    device : torch device, optional
        Where to encode (default: where the layer's parameters are).
    forward_kwargs : dict, optional
        Extra keyword arguments of the layer. A layer whose forward takes ``pos`` and whose
        output depends on it (VCF-Bert's) must have it stated here, e.g. ``{"pos": True}``:
        without it the embeddings silently lack the position term.
    weights_version : str, optional
        Identifies the layer's weights as given to :meth:`IndexSet.build`; the index set is
        then trusted for as long as this string matches (needed for layers that are not
        ``torch.nn.Module``).
    compose : {"auto", "always", "never"}
        How :meth:`augment` embeds the retrieved rows: ``auto`` composes them from per-window
        tables when the layer is position-wise and, in train mode, behaves as its eval mode
        followed by a final dropout (verified once, see :mod:`vcfstore.retrieval.compose`), and
        encodes them directly otherwise; ``always`` raises where composition does not apply;
        ``never`` always encodes directly. :attr:`compose_plan` says what was decided and why.
    final_dropout : float, optional
        Declares that the layer in train mode is its eval mode followed by dropout at this rate,
        instead of the check.
    """

    def __init__(
        self,
        store: PanelStore,
        embedding_layer: Embedding,
        k: int = 1,
        backend: str = "auto",
        index_set: IndexSet | None = None,
        budget: MemoryBudget | None = None,
        device: Any = None,
        forward_kwargs: dict[str, Any] | None = None,
        weights_version: str | None = None,
        compose: str = "auto",
        final_dropout: float | None = None,
    ) -> None:
        if backend not in ("auto", "exact", "faiss"):
            raise ArgumentError(f"backend must be 'auto', 'exact' or 'faiss', not {backend!r}")
        k = check_k(k, store.n_haplotypes)
        if backend == "faiss" and index_set is None:
            raise ArgumentError("backend='faiss' needs an index_set (IndexSet.build or IndexSet.open)")
        if index_set is not None and index_set.store.identity != store.identity:
            raise IndexSetError("the index set was built for another store than the retriever's")
        self.store, self.layer, self.k = store, embedding_layer, k
        self.requested, self.index_set, self.budget = backend, index_set, budget
        self.forward_kwargs = dict(forward_kwargs or {})
        self.device = embedding_device(embedding_layer, device)
        check_pos_stated(embedding_layer, self.forward_kwargs, store, self.device)
        self.weights = WeightsIdentity(embedding_layer, self.forward_kwargs, weights_version)
        self.exact = ExactSearcher(embedding_layer, self.forward_kwargs, self.device, weights=self.weights)
        self.composer = Composer(
            embedding_layer, self.forward_kwargs, self.device, mode=compose, final_dropout=final_dropout
        )
        self.window_cache = WindowCache(store, budget)
        self._backend: str | None = None if backend == "auto" else backend

    @property
    def backend(self) -> str:
        """The backend in use ("exact" or "faiss"); ``auto`` decides on the first search."""
        return self._backend or "undecided"

    @property
    def compose_plan(self) -> ComposePlan | None:
        """How :meth:`augment` embeds retrieved rows in the layer's current mode (None until a batch decided it)."""
        return self.composer.current_plan()

    def _reserve(self, nbytes: int, what: str, *, on_device: bool = False) -> contextlib.AbstractContextManager[None]:
        """Admit a batch's working set with the budget for the block (nothing without a budget)."""
        if self.budget is None or nbytes <= 0:
            return contextlib.nullcontext()
        kind = "gpu" if on_device and self.device.type == "cuda" else "anon"
        return self.budget.reserve(nbytes, what, kind=kind)

    # --- search ----------------------------------------------------------------------------
    def search(
        self, window: int, query_tokens: np.ndarray | torch.Tensor, query_af: np.ndarray | torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The K nearest references of masked query rows of one window.

        Parameters
        ----------
        window : int
        query_tokens : int [n, L]
            Masked tokens laid out as :meth:`PanelStore.window_tokens` gives them (sites hold only
            the mask or allele tokens); references are compared masked exactly where each query
            is masked.
        query_af : float [L] or [n, L] (equal rows), optional
            The queries' allele frequencies, in [0, 1] (default: the store's).

        Returns
        -------
        (distances float32 [n, k], indices int64 [n, k])
            Squared L2 distances between flattened embeddings; ties go to the lowest index.

        Raises
        ------
        ArgumentError
            For tokens of the wrong shape, type or layout, an empty batch, or allele frequencies
            that are not finite values in [0, 1].
        StaleIndexError
            (FAISS backend) If the window's index was built with other weights, another layer,
            other ``forward_kwargs`` or another mask than the queries'.
        """
        q = to_numpy(query_tokens)
        if q.dtype == bool or not np.issubdtype(q.dtype, np.integer):
            raise ArgumentError(f"query tokens must be integer token ids, not {q.dtype}")
        q = q.astype(np.int64, copy=False)
        sites = self.store.window_sites(window)
        check_query_tokens(q, len(sites), self.store.max_seq_len, self.store.vocab)
        ref_af = self.store.window_af(window)
        qaf = None
        if query_af is not None:
            qaf = check_af(to_numpy(query_af), "query_af")
            if qaf.shape not in ((q.shape[1],), q.shape):
                raise ArgumentError(f"query_af has shape {qaf.shape}; expected [{q.shape[1]}] or {list(q.shape)}")
            if qaf.ndim == 2:
                if not (qaf == qaf[:1]).all():
                    raise ArgumentError("queries of one window must share their allele frequencies (one row [L])")
                qaf = qaf[0]
        if self._backend is None:
            self._backend = self._choose(window, q, ref_af, qaf)
        if self._backend == "exact":
            alleles = self.window_cache.packed(window)
            temporaries = self.exact.working_bytes(len(q), len(alleles), len(sites))
            # Counting with torch: the packed window where the layer is, unpacked a chunk at a time, and the counts.
            on_device = 0
            if self.exact.engine == "torch":
                on_device = alleles.bits.nbytes + device_search.working_bytes(len(q), len(alleles), len(sites))
            with (
                self._reserve(temporaries, f"the exact search of window {window}"),
                self._reserve(on_device, f"counting window {window} on {self.device}", on_device=True),
            ):
                store = self.store
                return self.exact.search(  # the query tokens were checked above
                    alleles,
                    q,
                    self.k,
                    max_seq_len=store.max_seq_len,
                    vocab=store.vocab,
                    ref_af=ref_af,
                    query_af=qaf,
                    validate=False,
                )
        return self._faiss_search(window, q, qaf if qaf is not None else ref_af)

    def _choose(self, window: int, q: np.ndarray, ref_af: np.ndarray, qaf: np.ndarray | None) -> str:
        try:
            self.exact.search(
                self.window_cache.packed(window),
                q[:1],
                1,
                max_seq_len=self.store.max_seq_len,
                vocab=self.store.vocab,
                ref_af=ref_af,
                query_af=qaf,
            )
            return "exact"
        except NotPositionwiseError:
            if self.index_set is None:
                raise
            return "faiss"

    def _faiss_search(self, window: int, q: np.ndarray, qaf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.index_set is not None
        self.index_set.check_fresh(window, weights=self.weights.digest())
        for row in np.unique(q == self.store.vocab.mask, axis=0):
            self.index_set.check_fresh(window, mask=row)
        with torch.no_grad(), eval_mode(self.layer):
            emb = embed(
                self.layer, q, np.broadcast_to(qaf, q.shape), forward_kwargs=self.forward_kwargs, device=self.device
            )
        x = emb.reshape(len(q), -1).float().cpu().numpy()
        if not np.isfinite(x).all():
            raise VcfstoreError("the embedding layer returned NaN or infinite values for these queries")
        d, i = self.index_set.search_exact(window, x, self.k)
        return d.astype(np.float32), i

    # --- the training path -----------------------------------------------------------------
    def augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add retrieved complete-reference embeddings to a batch (VCF-Bert's ``process_batch_retrieval``).

        ``batch`` holds ``hap_1``, ``hap_2`` (masked tokens [B, L]), ``af`` [B, L] and
        ``window_idx`` [B]. Adds ``rag_emb_h1``, ``rag_emb_h2`` [B, K, L, D] (float32, on the
        layer's device, with gradients into the layer) and ``rag_idx_h1``, ``rag_idx_h2`` [B, K].
        The embeddings are composed from each window's table of the two allele rows (position-wise
        layers; in train mode with the layer's final dropout applied to them), or else the unique
        retrieved rows of each window are encoded (see ``compose`` and :attr:`compose_plan`). On
        the CPU, composed embeddings are written into buffers that a later batch reuses once
        nothing refers to them any more.
        """
        for key in ("hap_1", "hap_2", "af", "window_idx"):
            if key not in batch:
                raise ArgumentError(f"batch has no {key!r}; it needs hap_1, hap_2, af and window_idx")
        h1, h2 = to_numpy(batch["hap_1"]), to_numpy(batch["hap_2"])
        windows = to_numpy(batch["window_idx"]).reshape(-1)
        B = len(windows)
        if B == 0:
            raise ArgumentError("the batch is empty")
        if windows.dtype == bool or not np.issubdtype(windows.dtype, np.integer):
            raise ArgumentError(f"window_idx must hold integer window indices, not {windows.dtype}")
        af = check_af(to_numpy(batch["af"]), "the batch's af")
        for key, value in (("hap_1", h1), ("hap_2", h2), ("af", af)):
            if value.shape != (B, self.store.max_seq_len):
                raise ArgumentError(
                    f"batch[{key!r}] has shape {value.shape}; expected [{B}, {self.store.max_seq_len}] "
                    f"for {B} window indices"
                )
        store, L, K = self.store, self.store.max_seq_len, self.k
        idx = np.empty((2, B, K), dtype=np.int64)
        found_by_window: _Found = []
        tables: list[torch.Tensor] = []
        plan = self.compose_plan
        for w in (int(w) for w in np.unique(windows)):
            members = np.flatnonzero(windows == w)
            queries = np.concatenate([h1[members], h2[members]])
            qaf = af[members[0]]
            if not (af[members] == qaf).all():
                raise ArgumentError(f"the batch's rows of window {w} have different af rows; a window's rows share one")
            n_sites, ref_af = len(store.window_sites(w)), store.window_af(w)
            if plan is None:
                plan = self.composer.plan(n_sites, L, store.vocab, ref_af)
            if plan.compose:
                # The window's table: composes the rows (with gradients) and gives the search its terms.
                tables.append(self.composer.table(n_sites, L, store.vocab, ref_af))
                if self._backend == "exact":
                    self.exact.prime(tables[-1].detach(), n_sites, L, store.vocab, ref_af)
            _, found = self.search(w, queries, qaf if not np.array_equal(qaf, ref_af) else None)
            idx[0, members], idx[1, members] = found[: len(members)], found[len(members) :]
            found_by_window.append((w, members, found))
        assert plan is not None
        out = self._compose(found_by_window, tables, B, plan) if plan.compose else self._encode(found_by_window, B)
        result = dict(batch)
        result.update(
            rag_emb_h1=out[0], rag_emb_h2=out[1], rag_idx_h1=torch.as_tensor(idx[0]), rag_idx_h2=torch.as_tensor(idx[1])
        )
        return result

    def _compose(
        self, found_by_window: _Found, tables: list[torch.Tensor], B: int, plan: ComposePlan
    ) -> list[torch.Tensor]:
        """[B, K, L, D] per haplotype, composed from the windows' tables (in the order of ``found_by_window``)."""
        L, K, D = self.store.max_seq_len, self.k, int(tables[0].shape[-1])
        alleles = np.zeros((2, B, K, L), dtype=np.uint8)  # 0 at SOS, EOS and padding: both tables agree there
        slots = np.empty((2, B, K), dtype=np.int64)
        for slot, (w, members, found) in enumerate(found_by_window):
            rows = self.window_cache.alleles(w, rows=found.reshape(-1)).reshape(2, len(members), K, -1)
            alleles[:, members, :, 1 : rows.shape[-1] + 1] = rows
            slots[:, members] = slot
        n = B * K
        groups = [(slots[h].reshape(n), alleles[h].reshape(n, L)) for h in (0, 1)]
        nbytes = self.composer.output_bytes([n, n], L, D) + 2 * self.composer.graph_bytes(n, L, D, plan.dropout)
        with self._reserve(nbytes, f"the retrieved embeddings of {B} rows (K={K}) and their graph", on_device=True):
            return self.composer.compose([t.float() for t in tables], groups, (B, K, L, D), plan.dropout)

    def _encode(self, found_by_window: _Found, B: int) -> list[torch.Tensor]:
        """[B, K, L, D] per haplotype: the unique retrieved rows of each window run through the layer."""
        store, L, K = self.store, self.store.max_seq_len, self.k
        encoded: list[torch.Tensor] = []
        where = np.empty((2, B, K), dtype=np.int64)  # each retrieved row's place among the encoded rows
        offset, D = 0, 0
        for w, members, found in found_by_window:
            uniq, inverse = np.unique(found, return_inverse=True)
            tokens = self.window_cache.tokens(w, rows=uniq)  # complete (unmasked) tokens
            af = store.window_af(w)
            D = self.composer.width(tokens, af)
            nbytes = len(uniq) * L * D * 4
            if torch.is_grad_enabled():
                nbytes += self.composer.direct_graph_bytes(len(uniq), tokens, af)
            with self._reserve(nbytes, f"encoding {len(uniq)} retrieved rows of window {w}", on_device=True):
                encoded.append(embed(self.layer, tokens, af, forward_kwargs=self.forward_kwargs, device=self.device))
            where[:, members] = offset + inverse.reshape(2, len(members), K)
            offset += len(uniq)
        with self._reserve(2 * B * K * L * D * 4, f"the retrieved embeddings of {B} rows (K={K})", on_device=True):
            rows = torch.cat(encoded).float() if len(encoded) > 1 else encoded[0].float()
            # one gather per haplotype: separate tensors, so each one's gradient goes straight to the rows
            return [rows[torch.as_tensor(where[h], device=self.device)] for h in (0, 1)]
