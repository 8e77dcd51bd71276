"""Retrieval for training: nearest reference haplotypes, then their complete embeddings.

Per batch, :meth:`Retriever.augment` finds the K references nearest to each masked query
haplotype of its window (exact token-space search, or a FAISS index set), reads only the unique
retrieved rows' complete tokens from the store and encodes them now, with gradients, so nothing
embedded is ever stored and nothing goes stale when the weights change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vcfstore.errors import ArgumentError, NotPositionwiseError
from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.window_cache import WindowCache
from vcfstore.retrieval.embedding import Embedding, embed, embedding_device, eval_mode, to_numpy
from vcfstore.retrieval.exact_search import ExactSearcher, top_k
from vcfstore.store.reader import PanelStore

if TYPE_CHECKING:  # the index layer sits above retrieval's embedding calls; only its type is needed
    from vcfstore.index.index_set import IndexSet


class Retriever:
    """Find and embed the K nearest reference haplotypes of masked queries.

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
        Needed by the FAISS backend.
    budget : MemoryBudget, optional
        Decoded windows are cached under it.
    device : torch device, optional
        Where to encode (default: where the layer's parameters are).
    forward_kwargs : dict, optional
        Extra keyword arguments of the layer (VCF-Bert's needs ``pos=True``).
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
    ) -> None:
        if backend not in ("auto", "exact", "faiss"):
            raise ArgumentError(f"backend must be 'auto', 'exact' or 'faiss', not {backend!r}")
        if not 1 <= k <= store.n_haplotypes:
            raise ArgumentError(f"k must be in [1, {store.n_haplotypes}], not {k}")
        if backend == "faiss" and index_set is None:
            raise ArgumentError("backend='faiss' needs an index_set (IndexSet.build or IndexSet.open)")
        self.store, self.layer, self.k = store, embedding_layer, k
        self.requested, self.index_set, self.budget = backend, index_set, budget
        self.forward_kwargs = forward_kwargs or {}
        self.device = embedding_device(embedding_layer, device)
        self.exact = ExactSearcher(embedding_layer, self.forward_kwargs, self.device)
        self.window_cache = WindowCache(store, budget)
        self._backend: str | None = None if backend == "auto" else backend

    @property
    def backend(self) -> str:
        """The backend in use ("exact" or "faiss"); ``auto`` decides on the first search."""
        return self._backend or "undecided"

    # --- search ----------------------------------------------------------------------------
    def search(
        self, window: int, query_tokens: np.ndarray | torch.Tensor, query_af: np.ndarray | torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The K nearest references of masked query rows of one window.

        Parameters
        ----------
        window : int
        query_tokens : int [n, L]
            Masked tokens laid out as :meth:`PanelStore.window_tokens` gives them; references
            are compared masked exactly where each query is masked.
        query_af : float [L], optional
            The queries' allele frequencies (default: the store's).

        Returns
        -------
        (distances float32 [n, k], indices int64 [n, k])
            Squared L2 distances between flattened embeddings; ties go to the lowest index.
        """
        q = to_numpy(query_tokens).astype(np.int64, copy=False)
        L = self.store.max_seq_len
        if q.ndim != 2 or q.shape[1] != L:
            raise ArgumentError(f"query tokens have shape {q.shape}; expected [n, {L}]")
        ref_af = self.store.window_af(window)
        qaf = None if query_af is None else to_numpy(query_af).astype(np.float32)
        if qaf is not None and qaf.ndim == 2:
            if not (qaf == qaf[:1]).all():
                raise ArgumentError("queries of one window must share their allele frequencies (one row [L])")
            qaf = qaf[0]
        if self._backend is None:
            self._backend = self._choose(window, q, ref_af, qaf)
        if self._backend == "exact":
            return self.exact.search(
                self.window_cache.alleles(window),
                q,
                self.k,
                max_seq_len=L,
                vocab=self.store.vocab,
                ref_af=ref_af,
                query_af=qaf,
            )
        return self._faiss_search(window, q, qaf if qaf is not None else ref_af)

    def _choose(self, window: int, q: np.ndarray, ref_af: np.ndarray, qaf: np.ndarray | None) -> str:
        try:
            self.exact.search(
                self.window_cache.alleles(window),
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
        vocab = self.store.vocab
        for row in np.unique(q == vocab.mask, axis=0):
            self.index_set.check_fresh(window, mask=row)
        with torch.no_grad(), eval_mode(self.layer):
            x = embed(
                self.layer, q, np.broadcast_to(qaf, q.shape), forward_kwargs=self.forward_kwargs, device=self.device
            )
        x = x.reshape(len(q), -1).float().cpu().numpy()
        atol = self.index_set.tie_tolerance(window, x)
        n_ref = self.store.n_haplotypes
        # A flat search costs one scan of the index whatever k is, so take a wide first net; if
        # the ties at the k-th distance still run past it (identical haplotypes are common),
        # the second and last scan returns every reference.
        d, i = self.index_set.search(window, x, min(n_ref, self.k + 256))
        if d.shape[1] < n_ref and not (d[:, -1:] > d[:, self.k - 1 : self.k] + atol).all():
            d, i = self.index_set.search(window, x, n_ref)
        # Rank the candidates as the exact backend does: equal distances (to FAISS's float32
        # rounding) by lowest index.
        order = np.argsort(i, axis=1, kind="stable")
        d_sorted, i_sorted = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
        dd, pos = top_k(d_sorted.astype(np.float64), self.k, atol)
        return dd, np.take_along_axis(i_sorted, pos, 1)

    # --- the training path -----------------------------------------------------------------
    def augment(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Add retrieved complete-reference embeddings to a batch (VCF-Bert's ``process_batch_retrieval``).

        ``batch`` holds ``hap_1``, ``hap_2`` (masked tokens [B, L]), ``af`` [B, L] and
        ``window_idx`` [B]. Adds ``rag_emb_h1``, ``rag_emb_h2`` [B, K, L, D] (float32, on the
        layer's device, with gradients into the layer) and ``rag_idx_h1``, ``rag_idx_h2`` [B, K].
        Only the unique retrieved rows of each window are read and encoded.
        """
        for key in ("hap_1", "hap_2", "af", "window_idx"):
            if key not in batch:
                raise ArgumentError(f"batch has no {key!r}; it needs hap_1, hap_2, af and window_idx")
        h1, h2 = to_numpy(batch["hap_1"]), to_numpy(batch["hap_2"])
        af = to_numpy(batch["af"]).astype(np.float32)
        windows = to_numpy(batch["window_idx"]).astype(np.int64).reshape(-1)
        B = len(windows)
        idx = np.empty((2, B, self.k), dtype=np.int64)
        pieces: list[tuple[np.ndarray, torch.Tensor, np.ndarray]] = []
        for w in np.unique(windows):
            members = np.flatnonzero(windows == w)
            queries = np.concatenate([h1[members], h2[members]])
            qaf = af[members[0]]
            _, found = self.search(
                int(w), queries, qaf if not np.array_equal(qaf, self.store.window_af(int(w))) else None
            )
            idx[0, members], idx[1, members] = found[: len(members)], found[len(members) :]
            uniq, inverse = np.unique(found, return_inverse=True)
            tokens = self.window_cache.tokens(int(w), rows=uniq)  # complete (unmasked) tokens
            emb = embed(
                self.layer, tokens, self.store.window_af(int(w)), forward_kwargs=self.forward_kwargs, device=self.device
            )
            pieces.append((members, emb, inverse.reshape(found.shape)))
        L, D = pieces[0][1].shape[1:]
        out = torch.zeros((2, B, self.k, L, D), dtype=torch.float32, device=self.device)
        for members, emb, inverse in pieces:  # one piece per window: the slices are differentiable
            n = len(members)
            m = torch.as_tensor(members, device=self.device)
            gathered = emb.float()[torch.as_tensor(inverse, device=self.device)]  # [2n, K, L, D]
            out[0, m] = gathered[:n]
            out[1, m] = gathered[n:]
        result = dict(batch)
        result.update(
            rag_emb_h1=out[0], rag_emb_h2=out[1], rag_idx_h1=torch.as_tensor(idx[0]), rag_idx_h2=torch.as_tensor(idx[1])
        )
        return result
