"""What every site source yields, and the protocol a source implements."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from vcfstore.sources.policy import InputPolicy, RecordFilter


@dataclass
class SiteBlock:
    """Consecutive sites, each with its phased 0/1 alleles for every haplotype.

    ``alleles`` is uint8 [n_sites, n_haplotypes]; haplotype ``h`` belongs to sample ``h // 2``.
    ``info_af`` is the input's own allele frequency per site (NaN where it has none) or None.
    ``missing`` is bool [n_sites, n_haplotypes], True where the input's allele is missing (its
    ``alleles`` entry is then 0), under the ``missing="mask"`` policy only; else None.
    """

    contigs: list[str]
    positions: np.ndarray
    ids: list[str]
    refs: list[str]
    alts: list[str]
    alleles: np.ndarray
    info_af: np.ndarray | None = None
    missing: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def slice(self, start: int, stop: int | None = None) -> SiteBlock:
        sl = slice(start, stop)
        return SiteBlock(
            self.contigs[sl],
            self.positions[sl],
            self.ids[sl],
            self.refs[sl],
            self.alts[sl],
            self.alleles[sl],
            None if self.info_af is None else self.info_af[sl],
            None if self.missing is None else self.missing[sl],
        )


class SiteSource(Protocol):
    """A streamed input panel: samples, a description for provenance, and blocks of sites.

    Implementations: :class:`~vcfstore.sources.VcfSource`, :class:`~vcfstore.sources.VcfZarrSource`,
    :class:`~vcfstore.sources.ArraySource` and :class:`~vcfstore.sources.TreeSequenceSource`.
    """

    samples: list[str]
    policy: InputPolicy
    filter: RecordFilter

    def describe(self) -> dict[str, object]:
        """Kind, name, size and a content digest of the input, recorded in the store."""
        ...

    def expected_records(self) -> int | None:
        """The number of input records when known cheaply (for progress), else None."""
        ...

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        """Blocks of at most about ``block_sites`` records' sites, in input order."""
        ...
