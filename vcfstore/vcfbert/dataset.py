"""VCF-Bert's training dataset on panel stores: its items, its indexing, the attributes its trainer touches.

:class:`VcfBertDataset` stands in for VCF-Bert's ``EmbeddingRAGDataset``: ``len`` is
``n_samples * n_windows`` with sample-major indexing (``item // W`` = sample, ``item % W`` =
window), each item carries both haplotypes of one sample in one window under the keys and
dtypes VCF-Bert's trainer and model read, and ``process_batch_retrieval`` adds the retrieved
embeddings. The attributes its driver and trainer set or read exist: ``window_count``,
``current_epoch``, ``add_level()``, ``regenerate_masks(seed)``, ``_TrainDataset__mask_rate``,
``_TrainDataset__level``, ``jit_cache_win_idx``, ``clear_jit_cache()``, ``embed_dim``, ``name``,
``window.window_info`` and ``vocab.mask_index``.

Masks are pure functions of (seed, window, rate) and the window's global AF: the seed is
``current_epoch`` for a dataset named ``"train"`` and ``validation_seed`` (2024) for any other
name, the rate ``_TrainDataset__mask_rate[_TrainDataset__level]``. Items fetched through
:class:`~vcfstore.vcfbert.WindowGroupedSampler` carry the seed and rate read in the main
process, so every worker (persistent ones too) masks as the main process does; references are
masked exactly like their query.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from vcfstore.errors import ArgumentError
from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.window_cache import WindowCache
from vcfstore.retrieval.torch_data import ItemKey
from vcfstore.store.annotations import SampleAnnotations
from vcfstore.store.masks import MaskSchedule
from vcfstore.store.reader import PanelStore
from vcfstore.store.vocab import layout_tokens, pad_sites
from vcfstore.vcfbert.build import Missing
from vcfstore.vcfbert.features import (
    PopulationFeatures,
    WindowTable,
    as_tensors,
    check_same_sites,
    checked_vocab,
    normalised_positions,
    population_features,
)
from vcfstore.vcfbert.files import AF, read_frequency_table
from vcfstore.vcfbert.masks import CURRICULUM_RATES, VALIDATION_SEED, VcfBertMasks
from vcfstore.vcfbert.retrieval import BatchRetrieval


class VcfBertDataset(Dataset):
    """VCF-Bert's training items from a cohort store, with retrieval from a reference store.

    Parameters
    ----------
    cohort : PanelStore
        The training cohort, built with VCF-Bert's site indexing (:func:`build_panel`).
    reference : PanelStore, optional
        The reference panel over the same sites and windows, its AF the table's global AF
        (:func:`build_stores` builds both); needed by :meth:`process_batch_retrieval`.
    frequencies : path or array, optional
        VCF-Bert's ``freq.npy`` (one row per site); default: the table the cohort store
        computed from its ``.panel`` file at build.
    groups : list of str, optional
        The table's groups in order (default: from ``panel``, else the store).
    panel : path or SampleAnnotations, optional
        The cohort's ``.panel`` file (samples paired by name); default: the store's annotations.
    masks : MaskSchedule or VcfBertMasks, optional
        The mask recipe: vcfstore's schedule (default, ``MaskSchedule(seed=0)``) or VCF-Bert's draws.
    name : str
        ``"train"`` masks with seed ``current_epoch``; any other name (VCF-Bert's ``"val"``)
        with ``validation_seed``.
    validation_seed : int
        The fixed seed of a dataset not named ``"train"`` (VCF-Bert: 2024).
    mask_rates : sequence of float
        The curriculum (VCF-Bert: 0.30 ... 0.80).
    embedding_layer : torch module, optional
        Only read for ``embed_dim`` (``embed_size``), as VCF-Bert's constructor does.
    budget : MemoryBudget, optional
        Decoded windows (cohort and reference) are cached under it.
    vocab : optional
        VCF-Bert's ``WordVocab``, kept as ``.vocab``; checked against the store's token ids.
    """

    def __init__(
        self,
        cohort: PanelStore,
        reference: PanelStore | None = None,
        *,
        frequencies: str | os.PathLike[str] | np.ndarray | None = None,
        groups: list[str] | None = None,
        panel: str | os.PathLike[str] | SampleAnnotations | None = None,
        masks: MaskSchedule | VcfBertMasks | None = None,
        name: str = "train",
        validation_seed: int = VALIDATION_SEED,
        mask_rates: tuple[float, ...] = CURRICULUM_RATES,
        embedding_layer: Any = None,
        budget: MemoryBudget | None = None,
        vocab: Any = None,
    ) -> None:
        self.cohort, self.reference, self.budget = cohort, reference, budget
        self.features: PopulationFeatures = population_features(
            cohort, cohort.samples, frequencies=frequencies, groups=groups, panel=panel, annotated_store=cohort
        )
        if reference is not None:
            check_same_sites(cohort, reference, self.features)
        if not mask_rates or not all(0.0 <= r <= 1.0 for r in mask_rates):
            raise ArgumentError(f"mask_rates must be rates in [0, 1], not {mask_rates}")
        self.vocab = checked_vocab(vocab, cohort.vocab)
        self.masks = masks if masks is not None else MaskSchedule(seed=0)
        self.name, self.validation_seed = name, validation_seed
        self.n_samples = len(cohort.samples)
        self.window_count = cohort.n_windows
        self.window = WindowTable(cohort.windows)
        self.max_seq_len = cohort.max_seq_len
        self.current_epoch = 0
        self.mask_version = 0
        self._TrainDataset__mask_rate = list(mask_rates)
        self._TrainDataset__level = 0
        self.jit_cache_win_idx = -1  # VCF-Bert's trainer resets it; nothing here depends on it
        self._retrieval = BatchRetrieval(reference, budget)
        self._embed_dim = getattr(embedding_layer, "embed_size", None)
        self._cache: WindowCache | None = None

    @classmethod
    def from_file(
        cls,
        vocab: Any,
        vcfpath: str | os.PathLike[str],
        panelpath: str | os.PathLike[str],
        freqpath: str | os.PathLike[str],
        windowpath: str | os.PathLike[str],
        typepath: Any = None,
        poppath: Any = None,
        pospath: Any = None,
        ref_vcf_path: str | os.PathLike[str] | None = None,
        embedding_layer: Any = None,
        build_ref_data: bool = True,
        n_gpu: int = 1,
        use_dynamic_mask: bool = False,
        name: str = "default",
        *,
        store_dir: str | os.PathLike[str] | None = None,
        masks: MaskSchedule | VcfBertMasks | None = None,
        budget: MemoryBudget | None = None,
        missing: Missing = "error",
        progress: bool = True,
    ) -> VcfBertDataset:
        """VCF-Bert's ``EmbeddingRAGDataset.from_file`` call, on stores built (once) from its files.

        The cohort store is built beside ``vcfpath`` (``<file>.vcfstore``) and the reference store
        beside ``ref_vcf_path``, or both in ``store_dir``; later calls reuse them while the files
        and windows are the same. ``typepath``, ``poppath`` and ``pospath`` (VCF-Bert's pickles)
        are accepted and not read: the table's rows are the VCF's records, its groups come
        from the ``.panel`` file. ``n_gpu`` and ``use_dynamic_mask`` are accepted and ignored.
        """
        from vcfstore.vcfbert.build import build_panel, store_path

        table = read_frequency_table(freqpath)
        af = table[AF, -1]
        cohort = build_panel(
            vcfpath,
            store_path(vcfpath, store_dir),
            windows=windowpath,
            af=af,
            annotations=panelpath,
            missing=missing,
            progress=progress,
        )
        reference = None
        if build_ref_data and ref_vcf_path is not None:
            reference = build_panel(
                ref_vcf_path, store_path(ref_vcf_path, store_dir), windows=windowpath, af=af, progress=progress
            )
        return cls(
            cohort,
            reference,
            frequencies=table,
            panel=panelpath,
            masks=masks,
            name=name,
            embedding_layer=embedding_layer,
            budget=budget,
            vocab=vocab,
        )

    def __len__(self) -> int:
        return self.n_samples * self.window_count

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None  # each process decodes its own windows
        return state

    # --- the curriculum and the masks -------------------------------------------------------
    @property
    def mask_rate(self) -> float:
        """The current curriculum rate, ``_TrainDataset__mask_rate[_TrainDataset__level]``."""
        return float(self._TrainDataset__mask_rate[self._TrainDataset__level])

    @property
    def mask_seed(self) -> int:
        """The seed items are masked with now: ``current_epoch`` when training, else ``validation_seed``."""
        return int(self.current_epoch) if self.name == "train" else int(self.validation_seed)

    def add_level(self) -> None:
        """One curriculum level up (VCF-Bert's trainer calls it after every second epoch); clamps at the top."""
        self._TrainDataset__level = min(self._TrainDataset__level + 1, len(self._TrainDataset__mask_rate) - 1)

    def regenerate_masks(self, seed: int) -> None:
        """VCF-Bert's mask refresh. Masks here are computed per item, so there is nothing to redraw.

        A validation dataset takes ``seed`` as its fixed seed (VCF-Bert's driver passes 2024). A
        training dataset masks with ``current_epoch``; VCF-Bert's reference masks followed
        ``seed`` while its queries followed ``current_epoch``, so a seed other than
        ``current_epoch`` is refused rather than served as a mismatch.
        """
        if self.name == "train":
            if int(seed) != int(self.current_epoch):
                raise ArgumentError(
                    f"training masks follow current_epoch ({self.current_epoch}), not seed {seed}: set "
                    "dataset.current_epoch first (references are always masked like their query)"
                )
        else:
            self.validation_seed = int(seed)
        self.mask_version += 1

    def site_mask(self, window: int, seed: int | None = None, rate: float | None = None) -> np.ndarray:
        """Boolean mask over the sites of ``window`` (True = masked), at this dataset's seed and rate by default."""
        sites = self.cohort.window_sites(window)
        af = self.features.global_af[sites.start : sites.stop]
        return self.masks.site_mask(
            af, int(window), self.mask_seed if seed is None else int(seed), self.mask_rate if rate is None else rate
        )

    def key(self, index: int) -> ItemKey:
        """``index`` with the seed and rate it is masked with now (what the samplers hand to workers)."""
        return ItemKey(int(index), self.mask_seed, self.mask_rate)

    # --- items ------------------------------------------------------------------------------
    def __getitem__(self, index: int | ItemKey) -> dict[str, Any]:
        """One item; ``index`` is an int (masked with this dataset's seed and rate) or an :class:`ItemKey`."""
        seed, rate = self.mask_seed, self.mask_rate
        if isinstance(index, tuple):
            index, seed, rate = index
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range [0, {len(self)})")
        sample, w = divmod(index, self.window_count)
        if self._cache is None:
            self._cache = WindowCache(self.cohort, self.budget, max_windows=2)
        alleles = self._cache.alleles(w, rows=np.array([2 * sample, 2 * sample + 1])).astype(np.int64)
        return as_tensors(self._item(sample, w, alleles, self.site_mask(w, seed, rate)))

    def _item(self, sample: int, w: int, alleles: np.ndarray, site_mask: np.ndarray) -> dict[str, Any]:
        """The item of ``sample`` in window ``w`` from its alleles int64 [2, n] and site mask bool [n]."""
        L = self.max_seq_len
        sites = self.cohort.window_sites(w)
        n = len(sites)
        mask = np.zeros(L, dtype=bool)
        mask[1 : n + 1] = site_mask
        tokens = layout_tokens(alleles, L, self.cohort.vocab, mask)
        h1, h2 = alleles
        return {
            "hap_1": tokens[0],
            "hap_2": tokens[1],
            "hap_1_label": pad_sites(h1, L, np.int64),
            "hap_2_label": pad_sites(h2, L, np.int64),
            "gt_label": pad_sites(2 * h1 + h2, L, np.int64),
            "mask": mask.astype(np.int64),
            "pos": pad_sites(normalised_positions(self.cohort.positions[sites.start : sites.stop]), L),
            **self.features.padded(sites, sample, L),
            "window_idx": w,
            "hap1_nomask": h1.copy(),
            "hap2_nomask": h2.copy(),
        }

    # --- retrieval --------------------------------------------------------------------------
    def process_batch_retrieval(
        self, batch: dict[str, Any], embedding_layer: Any, device: Any, k_retrieve: int = 1
    ) -> dict[str, Any]:
        """VCF-Bert's retrieval call: adds ``rag_emb_h1``/``rag_emb_h2`` [B, K, L, D] (see :class:`BatchRetrieval`)."""
        return self._retrieval(batch, embedding_layer, device, k_retrieve)

    def clear_jit_cache(self) -> None:
        """Drop the retriever and its decoded reference windows; free cached CUDA memory as VCF-Bert does."""
        import torch

        self._retrieval.clear()
        self.jit_cache_win_idx = -1
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    @property
    def embed_dim(self) -> int | None:
        """The embedding width: the layer's ``embed_size`` given at construction, else that of the last retrieval."""
        return self._embed_dim if self._embed_dim is not None else self._retrieval.embed_dim
