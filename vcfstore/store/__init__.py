"""The panel store: its format, vocabulary, reader, streamed builder, windows, masks, target alignment.

Importing this package loads neither torch nor FAISS.
"""

from __future__ import annotations

from vcfstore.store.align import AlignedTarget, AlignmentReport
from vcfstore.store.annotations import SampleAnnotations, read_frequencies, read_sample_annotations
from vcfstore.store.builder import build_from_arrays, build_store
from vcfstore.store.format import ATTR_KEY, STORE_FORMAT_VERSION
from vcfstore.store.masks import EpochMasks, MaskSchedule, masks_version
from vcfstore.store.partitioned import build_store_parallel
from vcfstore.store.reader import PanelStore, open_store, read_store_attrs
from vcfstore.store.vocab import Vocabulary, layout_site_tokens, layout_tokens, pad_sites
from vcfstore.store.windows import check_windows, fixed_windows, read_windows_csv

__all__ = [
    "ATTR_KEY",
    "AlignedTarget",
    "AlignmentReport",
    "STORE_FORMAT_VERSION",
    "EpochMasks",
    "MaskSchedule",
    "PanelStore",
    "SampleAnnotations",
    "Vocabulary",
    "build_from_arrays",
    "build_store",
    "build_store_parallel",
    "check_windows",
    "fixed_windows",
    "layout_site_tokens",
    "layout_tokens",
    "masks_version",
    "open_store",
    "pad_sites",
    "read_frequencies",
    "read_sample_annotations",
    "read_store_attrs",
    "read_windows_csv",
]
