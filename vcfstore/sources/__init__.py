"""Input panels as streams of phased biallelic sites: VCF/BCF, VCF Zarr, arrays, tree sequences.

Every source yields :class:`SiteBlock` objects of at most ``block_sites`` sites, so the builder
never holds the whole panel, and applies the :class:`InputPolicy` through one
:class:`RecordFilter`. Importing this package loads neither torch nor FAISS.
"""

from __future__ import annotations

import os
from pathlib import Path

from vcfstore.errors import InputError
from vcfstore.sources.arrays import ArraySource, haplotype_block
from vcfstore.sources.base import SiteBlock, SiteSource
from vcfstore.sources.policy import InputPolicy, RecordFilter
from vcfstore.sources.tskit import TreeSequenceSource
from vcfstore.sources.vcf import VcfSource
from vcfstore.sources.vcf_zarr import VcfZarrSource


def open_source(
    path: str | os.PathLike[str], *, region: str | None = None, policy: InputPolicy | None = None
) -> VcfSource | VcfZarrSource:
    """A site source for a VCF/BCF file, or for a VCF Zarr directory."""
    path = Path(path)
    if path.is_dir():
        if region:
            raise InputError("a region works on indexed VCF/BCF files, not on VCF Zarr stores")
        return VcfZarrSource(path, policy=policy)
    return VcfSource(path, region=region, policy=policy)


__all__ = [
    "ArraySource",
    "InputPolicy",
    "RecordFilter",
    "SiteBlock",
    "SiteSource",
    "TreeSequenceSource",
    "VcfSource",
    "VcfZarrSource",
    "haplotype_block",
    "open_source",
]
