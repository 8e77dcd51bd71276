"""Phased sites from a VCF Zarr store (the layout bio2zarr's ``vcf2zarr`` writes)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np

from vcfstore.errors import InputError
from vcfstore.sources.base import SiteBlock
from vcfstore.sources.policy import InputPolicy, RecordFilter


class VcfZarrSource:
    """Phased sites from a VCF Zarr store (the layout bio2zarr's ``vcf2zarr`` writes).

    Reads ``call_genotype``, ``call_genotype_phased``, ``variant_position``, ``variant_contig``,
    ``contig_id``, ``variant_allele``, ``variant_id`` and ``sample_id`` in variant chunks. The
    frequency comes from ``variant_AF`` when the allele frequency is taken from the input.
    ``variants`` (start, stop) reads only that range of variant indices (a partition of a
    partitioned build, :mod:`vcfstore.store.partitioned`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        policy: InputPolicy | None = None,
        variants: tuple[int, int] | None = None,
    ) -> None:
        import zarr

        self.path = Path(path)
        try:
            self.root: Any = cast(Any, zarr.open_group(str(self.path), mode="r"))  # arrays by name
            self.samples = [str(s) for s in self.root["sample_id"][:]]
            self._gt: Any = self.root["call_genotype"]
        except Exception as e:  # noqa: BLE001 - any failure here means "not a VCF Zarr store"
            raise InputError(f"{self.path}: not a VCF Zarr store ({e})") from None
        if self._gt.ndim != 3 or self._gt.shape[2] != 2:
            raise InputError(f"{self.path}: call_genotype has shape {self._gt.shape}; vcfstore needs diploid calls")
        n = int(self._gt.shape[0])
        self.variants = (0, n) if variants is None else (int(variants[0]), int(variants[1]))
        if not 0 <= self.variants[0] <= self.variants[1] <= n:
            raise InputError(f"{self.path}: variant range {self.variants} is outside the store's {n} variants")
        self.policy = policy or InputPolicy()
        self.filter = RecordFilter(self.policy)

    def describe(self) -> dict[str, object]:
        meta = sorted(p for p in self.path.rglob("zarr.json"))
        h = hashlib.sha256()
        for p in meta:  # metadata identifies the store; hashing every chunk would read the panel twice
            h.update(p.read_bytes())
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {"kind": "vcf-zarr", "name": self.path.name, "size": size, "sha256": h.hexdigest()}

    def expected_records(self) -> int | None:
        return self.variants[1] - self.variants[0]

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        r: Any = self.root
        contig_names = [str(c) for c in r["contig_id"][:]]
        first, n = self.variants
        if self._gt.shape[0] == 0:
            raise InputError(f"{self.path}: the store has no variants")
        has_af = "variant_AF" in r
        for start in range(first, n, block_sites):
            sl = slice(start, min(start + block_sites, n))
            alleles = r["variant_allele"][sl]
            phased = (
                r["call_genotype_phased"][sl] if "call_genotype_phased" in r else np.ones(self._gt[sl].shape[:2], bool)
            )
            yield self.filter(
                [contig_names[c] for c in r["variant_contig"][sl]],
                r["variant_position"][sl].tolist(),
                [str(x) for x in r["variant_id"][sl]] if "variant_id" in r else ["."] * (sl.stop - start),
                [str(a[0]) for a in alleles],
                [[str(x) for x in a[1:] if str(x)] for a in alleles],
                self._gt[sl].astype(np.int16),
                phased,
                [np.atleast_1d(x).tolist() for x in r["variant_AF"][sl]] if has_af else None,
            )
