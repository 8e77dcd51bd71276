"""VCF-Bert's imputation flow on an aligned target: items, retrieval, predictions in site x sample order.

VCF-Bert imputes a target that has only some of the reference panel's sites: windows are
consecutive runs of the reference's sites (1020 per window in its item code), a site the
target lacks is masked (token MASK, ``mask`` 1) for every sample, the model sees the global
and population frequencies of the reference sites, and items are visited window-major so one
window's retrieval index stays in use (its FAISS version rebuilt and reloaded indexes and
thrashed at 43 s a batch). The predictions are reassembled as ``[sites, samples]``.

Here the target is an :class:`~vcfstore.store.align.AlignedTarget` (sites matched by contig,
position, REF and ALT; swapped alleles recoded; a genotype missing in the target masked for
that sample), the windows are the reference store's (build it with ``window_size=1020`` for
VCF-Bert's), retrieval is the exact token-space search (nothing to build or reload per
window), and :func:`impute` returns an :class:`Imputation`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vcfstore.errors import ArgumentError, VcfstoreError
from vcfstore.memory.budget import MemoryBudget
from vcfstore.sources import SiteSource
from vcfstore.store.align import AlignedTarget
from vcfstore.store.annotations import SampleAnnotations
from vcfstore.store.reader import PanelStore
from vcfstore.store.vocab import layout_tokens, pad_sites
from vcfstore.vcfbert.features import (
    WindowTable,
    as_tensors,
    check_reference_af,
    checked_vocab,
    normalised_positions,
    population_features,
)
from vcfstore.vcfbert.files import AF, INFER_WINDOW_LEN, read_frequency_table
from vcfstore.vcfbert.retrieval import BatchRetrieval
from vcfstore.vcfbert.sampler import collate


class VcfBertInferDataset(Dataset):
    """VCF-Bert's inference items for a target cohort aligned to a reference store.

    ``len`` is ``n_samples * W``, sample-major as in training; items carry ``hap_1``,
    ``hap_2`` (tokens, MASK where the target has no allele), ``mask``, ``hap1_nomask``,
    ``hap2_nomask`` (0 where masked), ``pos``, ``af``, ``af_p``, ``ref``, ``het``, ``hom``,
    ``window_idx`` and, as VCF-Bert's, ``sample_idx``, ``start_idx``, ``end_idx`` (int64 [1]).
    There are no labels.

    Parameters
    ----------
    reference : PanelStore
        The reference panel; its windows are the inference windows and its AF must be the
        table's global AF.
    target : AlignedTarget, PanelStore, site source or path
        The cohort to impute (aligned to ``reference`` here unless already aligned).
    frequencies : path or array, optional
        VCF-Bert's ``freq.npy`` over the reference's sites; default: the reference store's table.
    groups : list of str, optional
        The table's groups (default: from ``panel``, else the store).
    panel : path or SampleAnnotations, optional
        The targets' ``.panel`` file. Without one, ``af_p``, ``ref``, ``het`` and ``hom`` are
        the table's Global column (VCF-Bert requires a panel).
    budget : MemoryBudget, optional
        Decoded reference windows are cached under it; :func:`impute` admits its results.
    """

    def __init__(
        self,
        reference: PanelStore,
        target: AlignedTarget | PanelStore | SiteSource | str | os.PathLike[str],
        *,
        frequencies: str | os.PathLike[str] | np.ndarray | None = None,
        groups: list[str] | None = None,
        panel: str | os.PathLike[str] | SampleAnnotations | None = None,
        budget: MemoryBudget | None = None,
        embedding_layer: Any = None,
        name: str = "infer",
        vocab: Any = None,
    ) -> None:
        self.reference, self.budget, self.name = reference, budget, name
        self.target = target if isinstance(target, AlignedTarget) else AlignedTarget(reference, target)
        if self.target.reference.path != reference.path:
            raise ArgumentError("the target is aligned to another reference store")
        self.features = population_features(
            reference,
            self.target.samples,
            frequencies=frequencies,
            groups=groups,
            panel=panel,
            annotated_store=None,
            global_without_panel=True,
        )
        check_reference_af(reference, self.features)
        self.vocab = checked_vocab(vocab, reference.vocab)
        self.n_samples = len(self.target.samples)
        self.window_count = reference.n_windows
        self.window = WindowTable(reference.windows)
        self.max_seq_len = reference.max_seq_len
        self.jit_cache_win_idx = -1
        self._retrieval = BatchRetrieval(reference, budget)
        self._embed_dim = getattr(embedding_layer, "embed_size", None)

    @classmethod
    def from_file(
        cls,
        vocab: Any,
        vcfpath: str | os.PathLike[str],
        panelpath: str | os.PathLike[str] | None,
        freqpath: str | os.PathLike[str],
        typepath: Any = None,
        poppath: Any = None,
        pospath: Any = None,
        ref_vcf_path: str | os.PathLike[str] | None = None,
        embedding_layer: Any = None,
        build_ref_data: bool = True,
        n_gpu: int = 1,
        name: str = "infer",
        *,
        store_dir: str | os.PathLike[str] | None = None,
        window_len: int = INFER_WINDOW_LEN,
        budget: MemoryBudget | None = None,
        progress: bool = True,
    ) -> VcfBertInferDataset:
        """VCF-Bert's ``EmbeddingRAGInferDataset.from_file`` call.

        The reference store (windows of ``window_len`` consecutive sites, AF from the table) is
        built once beside ``ref_vcf_path`` (``<file>.infer<window_len>.vcfstore``) or in
        ``store_dir``, and reused; the target VCF is aligned to it. The pickles are not read
        (the table's rows are the reference's records); ``build_ref_data`` and ``n_gpu`` are ignored.
        """
        from vcfstore.vcfbert.build import build_panel, store_path

        if ref_vcf_path is None:
            raise ArgumentError("imputation needs the reference panel: pass ref_vcf_path=")
        table = read_frequency_table(freqpath)
        reference = build_panel(
            ref_vcf_path,
            store_path(ref_vcf_path, store_dir, f".infer{window_len}"),
            window_size=window_len,
            af=table[AF, -1],
            progress=progress,
        )
        return cls(
            reference,
            vcfpath,
            frequencies=table,
            panel=panelpath,
            budget=budget,
            embedding_layer=embedding_layer,
            name=name,
            vocab=vocab,
        )

    def __len__(self) -> int:
        return self.n_samples * self.window_count

    # --- VCF-Bert's attribute names ---------------------------------------------------------
    @property
    def ori_pos(self) -> np.ndarray:
        """The reference's bp positions (VCF-Bert's full site list)."""
        return self.reference.positions

    @property
    def position_needed(self) -> np.ndarray:
        """bool [n_sites]: reference sites the target lacks (imputed for every sample)."""
        return self.target.site_missing

    @property
    def infer_masks(self) -> list[np.ndarray]:
        """Per window, the padded mask of the sites the target lacks: int64 [max_seq_len]."""
        missing = self.target.site_missing
        return [pad_sites(missing[a:b], self.max_seq_len, np.int64) for a, b in self.reference.windows]

    @property
    def embed_dim(self) -> int | None:
        return self._embed_dim if self._embed_dim is not None else self._retrieval.embed_dim

    # --- items ------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range [0, {len(self)})")
        sample, w = divmod(index, self.window_count)
        L = self.max_seq_len
        sites = self.reference.window_sites(w)
        alleles, missing = self.target.window(w, rows=np.array([2 * sample, 2 * sample + 1]))
        alleles = alleles.astype(np.int64)
        # A genotype missing in the target is imputed for both haplotypes of that sample, as a site it lacks.
        mask = np.zeros(L, dtype=bool)
        mask[1 : len(sites) + 1] = missing.any(axis=0)
        tokens = layout_tokens(alleles, L, self.reference.vocab, mask)
        item = {
            "hap_1": tokens[0],
            "hap_2": tokens[1],
            "mask": mask.astype(np.int64),
            "pos": pad_sites(normalised_positions(self.reference.positions[sites.start : sites.stop]), L),
            **self.features.padded(sites, sample, L),
            "window_idx": w,
            "hap1_nomask": alleles[0],
            "hap2_nomask": alleles[1],
            "sample_idx": np.array([sample], dtype=np.int64),
            "start_idx": np.array([sites.start], dtype=np.int64),
            "end_idx": np.array([sites.stop], dtype=np.int64),
        }
        return as_tensors(item)

    def process_batch_retrieval(
        self, batch: dict[str, Any], embedding_layer: Any, device: Any, k_retrieve: int = 1
    ) -> dict[str, Any]:
        """VCF-Bert's inference retrieval: ``rag_emb_h1``/``rag_emb_h2`` [B, K, L, D], without gradients."""
        with torch.no_grad():
            return self._retrieval(batch, embedding_layer, device, k_retrieve)

    def clear_jit_cache(self) -> None:
        """Drop the retriever and its decoded reference windows."""
        self._retrieval.clear()
        self.jit_cache_win_idx = -1


@dataclass
class Imputation:
    """Predictions for every reference site and target sample, in site x sample order.

    Attributes
    ----------
    samples : array of str [n_samples]
    positions : int64 [n_sites]
        The reference's bp positions.
    imputed : bool [n_sites]
        Sites the target lacks (predicted for every sample); the others were observed.
    alt_probability : float32 [n_sites, n_samples, 2]
        P(ALT) of haplotype 1 and 2; NaN at sites outside every window. Sites in several
        windows get the mean of their predictions.
    """

    samples: np.ndarray
    positions: np.ndarray
    imputed: np.ndarray
    alt_probability: np.ndarray

    def genotype_probabilities(self) -> np.ndarray:
        """float32 [n_sites, n_samples, 4]: phased genotypes 0|0, 0|1, 1|0, 1|1 (VCF-Bert's order)."""
        p1, p2 = self.alt_probability[..., 0], self.alt_probability[..., 1]
        return np.stack([(1 - p1) * (1 - p2), (1 - p1) * p2, p1 * (1 - p2), p1 * p2], axis=-1)

    def dosage(self) -> np.ndarray:
        """float32 [n_sites, n_samples]: expected ALT count."""
        return self.alt_probability.sum(axis=-1)

    def hard_calls(self) -> np.ndarray:
        """uint8 [n_sites, n_samples, 2]: the more likely allele of each haplotype."""
        return (self.alt_probability >= 0.5).astype(np.uint8)


def impute(
    model: Any,
    dataset: VcfBertInferDataset,
    *,
    embedding_layer: Any = None,
    k: int = 1,
    batch_size: int = 24,
    device: Any = None,
    num_workers: int = 0,
    outputs: str = "probabilities",
) -> Imputation:
    """Run VCF-Bert's imputation loop: window-major batches, retrieval, the model, reassembly.

    Parameters
    ----------
    model : torch module
        Called as ``model(batch)`` on the batch dict (tensors on ``device``, ``rag_emb_h1/h2``
        added); returns a sequence whose first two entries are per-haplotype scores
        ``[B, L, 2]`` (VCF-Bert's ``BERTFoundationModel``).
    dataset : VcfBertInferDataset
    embedding_layer : torch module, optional
        The layer retrieval encodes with (default: ``model.bert.embedding`` or ``model.embedding``).
    k, batch_size, num_workers : int
    device : optional
        Default: where the model's parameters are.
    outputs : {"probabilities", "logits"}
        VCF-Bert's model returns softmax probabilities (its inference softmaxes them a second
        time); ``"logits"`` applies one softmax.
    """
    if outputs not in ("probabilities", "logits"):
        raise ArgumentError(f"outputs must be 'probabilities' or 'logits', not {outputs!r}")
    layer = embedding_layer if embedding_layer is not None else _embedding_of(model)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    reference, W, S = dataset.reference, dataset.window_count, dataset.n_samples
    n_sites = reference.n_sites
    if dataset.budget is not None:
        dataset.budget.admit(n_sites * S * 2 * 4, what="imputation results")
    total = np.zeros((n_sites, S, 2), dtype=np.float32)
    count = np.zeros(n_sites, dtype=np.int32)
    for a, b in reference.windows:
        count[a:b] += 1
    starts = range(0, S, batch_size)
    batches = [[s * W + w for s in range(a, min(a + batch_size, S))] for w in range(W) for a in starts]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                batch = dataset.process_batch_retrieval(batch, layer, device, k)
                scores = model({key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in batch.items()})
                p = _alt_probabilities(scores, outputs)  # [2, B, L]
                for i, (s, w) in enumerate(zip(batch["sample_idx"][:, 0].tolist(), batch["window_idx"], strict=True)):
                    sites = reference.window_sites(int(w))
                    total[sites.start : sites.stop, s] += p[:, i, 1 : len(sites) + 1].T
    finally:
        model.train(was_training)
    with np.errstate(invalid="ignore", divide="ignore"):
        total /= count[:, None, None]  # in place: the results are the one large allocation admitted
    target = dataset.target
    return Imputation(np.asarray(target.samples), reference.positions, target.site_missing.copy(), total)


def _alt_probabilities(scores: Any, outputs: str) -> np.ndarray:
    """P(ALT) float32 [2, B, L] from the model's first two outputs [B, L, 2]."""
    if not isinstance(scores, (list, tuple)) or len(scores) < 2:
        raise VcfstoreError("the model must return a sequence whose first two entries are [B, L, 2] haplotype scores")
    out = []
    for s in scores[:2]:
        if s.ndim != 3 or s.shape[-1] != 2:
            raise VcfstoreError(f"a haplotype output has shape {tuple(s.shape)}; expected [B, L, 2]")
        probs = torch.softmax(s.float(), dim=-1) if outputs == "logits" else s.float()
        out.append(probs[..., 1].cpu().numpy())
    return np.stack(out)


def _embedding_of(model: Any) -> Any:
    for path in (("bert", "embedding"), ("embedding",)):
        obj: Any = model
        for name in path:
            obj = getattr(obj, name, None)
        if obj is not None:
            return obj
    raise ArgumentError("pass embedding_layer= (the model has no .bert.embedding or .embedding)")
