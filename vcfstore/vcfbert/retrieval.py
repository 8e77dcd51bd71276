"""VCF-Bert's ``process_batch_retrieval`` on vcfstore's retriever.

VCF-Bert, per window of a batch: embeds every reference haplotype masked with the window mask
(eval mode), embeds the masked queries, takes the K nearest by L2 distance between flattened
``[L, D]`` embeddings, then re-encodes the retrieved references' *complete* tokens with the
global AF and ``pos=True`` (with gradients under ``enable_grad``) into ``rag_emb_h1`` /
``rag_emb_h2`` ``[B, K, L, D]``. Holding those embeddings and a flat index per window is what
ran out of memory (and thrashed at inference).

Here :class:`vcfstore.Retriever` does the same search exactly in token space (references are
masked exactly where each query is, which is VCF-Bert's window mask) and encodes only the
unique retrieved rows, under the dataset's :class:`~vcfstore.MemoryBudget`. One difference:
the search always embeds in eval mode, where VCF-Bert embeds training queries with dropout
(so its neighbours change from one call to the next); the re-encoding runs in the layer's
current mode, with dropout and gradients in training, as VCF-Bert's does.
"""

from __future__ import annotations

from typing import Any

from vcfstore.errors import ArgumentError
from vcfstore.memory.budget import MemoryBudget
from vcfstore.store.reader import PanelStore


class BatchRetrieval:
    """The retriever behind a dataset's ``process_batch_retrieval``: one at a time, rebuilt for another layer.

    Parameters
    ----------
    reference : PanelStore or None
        The reference panel (its AF must be the items' ``af``).
    budget : MemoryBudget, optional
        Decoded reference windows are cached under it.
    """

    def __init__(self, reference: PanelStore | None, budget: MemoryBudget | None) -> None:
        self.reference, self.budget = reference, budget
        self._key: tuple[int, int, str] | None = None
        self._retriever: Any = None
        self.embed_dim: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Workers never retrieve; a retriever holds the layer and decoded windows.
        return {"reference": self.reference, "budget": self.budget, "_key": None, "_retriever": None, "embed_dim": None}

    def clear(self) -> None:
        """Drop the retriever and its decoded windows (VCF-Bert's ``clear_jit_cache``)."""
        self._key, self._retriever = None, None

    def __call__(self, batch: dict[str, Any], embedding_layer: Any, device: Any, k_retrieve: int = 1) -> dict[str, Any]:
        """Add ``rag_emb_h1``, ``rag_emb_h2`` (float32 [B, K, L, D] on ``device``) and ``rag_idx_h1/h2`` [B, K].

        Gradients reach the layer's weights when called under ``torch.enable_grad()`` (as VCF-Bert's
        trainer does in training) and not under ``torch.no_grad()``. The batch dict is updated in
        place and returned.
        """
        from vcfstore.retrieval.retriever import Retriever

        if self.reference is None:
            raise ArgumentError("this dataset has no reference panel to retrieve from (pass reference=)")
        key = (id(embedding_layer), int(k_retrieve), str(device))
        if key != self._key:
            self._retriever = Retriever(
                self.reference,
                embedding_layer,
                k=int(k_retrieve),
                backend="exact",
                budget=self.budget,
                device=device,
                forward_kwargs={"pos": True},
            )
            self._key = key
        out = self._retriever.augment(batch)
        batch.update({k: out[k] for k in ("rag_emb_h1", "rag_emb_h2", "rag_idx_h1", "rag_idx_h2")})
        self.embed_dim = int(out["rag_emb_h1"].shape[-1])
        return batch
