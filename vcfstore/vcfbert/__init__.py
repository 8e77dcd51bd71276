"""A drop-in for VCF-Bert's (RAG-SNVBERT) data path: its files, items, masks, samplers, retrieval and imputation.

VCF-Bert trains with retrieval over a reference panel; holding the panel's embeddings and a flat
index per window ran out of memory. This package serves VCF-Bert's training and inference from
vcfstore panel stores under a :class:`~vcfstore.MemoryBudget`, with the interfaces its trainer,
model and driver use:

* :mod:`~vcfstore.vcfbert.files` - its ``.panel`` file, ``freq.npy`` and segments CSV;
* :func:`build_stores` / :func:`build_panel` - stores with its site indexing (one site per record);
* :class:`VcfBertDataset` - its training items and the attributes its trainer touches, and
  ``process_batch_retrieval``;
* :class:`VcfBertMasks` - its masks drawn its way (the default is vcfstore's :class:`~vcfstore.MaskSchedule`);
* :class:`WindowGroupedSampler`, :class:`WindowMajorSampler`, :func:`collate`;
* :class:`VcfBertInferDataset`, :func:`impute` - its imputation flow, predictions site x sample.

Importing this package imports torch.
"""

from __future__ import annotations

from vcfstore.vcfbert.build import VcfBertStores, build_panel, build_stores, store_path, vcfbert_policy
from vcfstore.vcfbert.dataset import VcfBertDataset
from vcfstore.vcfbert.files import (
    INFER_WINDOW_LEN,
    MAX_SEQ_LEN,
    PanelFile,
    read_frequency_table,
    read_panel_file,
    read_segments_csv,
    write_frequency_table,
    write_panel_file,
    write_segments_csv,
)
from vcfstore.vcfbert.inference import Imputation, VcfBertInferDataset, impute
from vcfstore.vcfbert.masks import CURRICULUM_RATES, VALIDATION_SEED, VcfBertMasks, curriculum_level
from vcfstore.vcfbert.sampler import WindowGroupedSampler, WindowMajorSampler, collate

__all__ = [
    "CURRICULUM_RATES",
    "INFER_WINDOW_LEN",
    "MAX_SEQ_LEN",
    "VALIDATION_SEED",
    "Imputation",
    "PanelFile",
    "VcfBertDataset",
    "VcfBertInferDataset",
    "VcfBertMasks",
    "VcfBertStores",
    "WindowGroupedSampler",
    "WindowMajorSampler",
    "build_panel",
    "build_stores",
    "collate",
    "curriculum_level",
    "impute",
    "read_frequency_table",
    "read_panel_file",
    "read_segments_csv",
    "store_path",
    "vcfbert_policy",
    "write_frequency_table",
    "write_panel_file",
    "write_segments_csv",
]
