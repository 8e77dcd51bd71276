"""Sample annotations (a 1000 Genomes ``.panel`` file) and per-population frequencies.

A ``.panel`` file has a header line ``sample pop super_pop gender`` and one line per sample,
whitespace-separated. With one, a build stores the annotations beside the samples and a
frequency table laid out as VCF-Bert's ``freq.npy``: float32 ``[4, n_groups + 1, n_sites]``,
axis 0 = hom-ref genotype frequency, het frequency, hom-alt frequency, ALT allele frequency
(VCF-Bert's ``REF=0, HET=1, HOM=2, AF=3``), axis 1 = the super-populations in sorted order,
then ``Global`` (all samples).

VCF-Bert pairs ``.panel`` line ``i + 1`` with VCF sample ``i``; vcfstore pairs them by sample
name and warns when the two orders differ.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore.errors import InputError, InputWarning

FREQUENCY_KINDS = ("hom_ref", "het", "hom_alt", "af")
GLOBAL_GROUP = "Global"
_REQUIRED = ("sample", "pop", "super_pop")


@dataclass(frozen=True)
class SampleAnnotations:
    """Population labels of a panel's samples, in the panel's sample order."""

    pop: np.ndarray  # str [n_samples]
    super_pop: np.ndarray  # str [n_samples]
    gender: np.ndarray  # str [n_samples] ("" where the file has no gender column)
    source: str = ""  # the file name, for provenance

    @classmethod
    def from_panel_file(cls, path: str | os.PathLike[str], samples: list[str] | np.ndarray) -> SampleAnnotations:
        """Read a ``.panel`` file and order its lines by ``samples`` (every sample must be listed).

        Raises
        ------
        InputError
            The file cannot be read, lacks a ``sample pop super_pop`` header, lists a sample
            twice, or lacks some of ``samples``.
        """
        path = Path(path)
        try:
            lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read sample panel {path}: {getattr(e, 'strerror', None) or e}") from None
        if not lines or not all(c in [h.lower() for h in lines[0]] for c in _REQUIRED):
            raise InputError(f"sample panel {path}: the first line must be a header naming sample, pop and super_pop")
        header = [h.lower() for h in lines[0]]
        col = {name: header.index(name) for name in (*_REQUIRED, "gender") if name in header}
        rows: dict[str, list[str]] = {}
        for n, fields in enumerate(lines[1:], start=2):
            if len(fields) <= max(col.values()):
                raise InputError(f"sample panel {path} line {n}: {len(fields)} fields; the header has {len(header)}")
            name = fields[col["sample"]]
            if name in rows:
                raise InputError(f"sample panel {path} line {n}: sample {name} is listed twice")
            rows[name] = fields
        samples = [str(s) for s in samples]
        absent = [s for s in samples if s not in rows]
        if absent:
            raise InputError(
                f"sample panel {path} lacks {len(absent)} of the panel's {len(samples)} samples "
                f"(first: {', '.join(absent[:3])})"
            )
        listed = [s for s in rows if s in set(samples)]
        if listed != samples:
            warnings.warn(
                f"sample panel {path} lists the samples in another order than the panel; vcfstore pairs them by "
                "name, VCF-Bert by line (its tables would pair them wrongly)",
                InputWarning,
                stacklevel=2,
            )

        def column(name: str) -> np.ndarray:
            if name not in col:
                return np.full(len(samples), "", dtype=str)
            return np.asarray([rows[s][col[name]] for s in samples], dtype=str)

        return cls(column("pop"), column("super_pop"), column("gender"), path.name)

    @property
    def groups(self) -> list[str]:
        """The frequency table's groups: the sorted super-populations, then ``Global``."""
        return [*sorted(set(self.super_pop.tolist())), GLOBAL_GROUP]

    def digest(self) -> str:
        """A digest of the labels, part of a build's identity."""
        text = "\n".join("\t".join(r) for r in zip(self.pop, self.super_pop, self.gender, strict=True))
        return hashlib.sha256(text.encode()).hexdigest()


def group_frequencies(alleles: np.ndarray, annotations: SampleAnnotations) -> np.ndarray:
    """float32 [4, n_groups + 1, n_sites]: genotype and allele frequencies per super-population.

    Parameters
    ----------
    alleles : uint8 [n_sites, n_haplotypes]
        Phased 0/1 alleles; haplotype ``h`` belongs to sample ``h // 2``.
    annotations : SampleAnnotations
        The samples' super-populations.
    """
    n_sites = alleles.shape[0]
    dosage = alleles[:, 0::2].astype(np.int8) + alleles[:, 1::2]  # [n_sites, n_samples]: 0, 1 or 2 ALT
    groups = annotations.groups
    members = [annotations.super_pop == g for g in groups[:-1]] + [np.ones(dosage.shape[1], dtype=bool)]
    out = np.empty((len(FREQUENCY_KINDS), len(groups), n_sites), dtype=np.float32)
    for g, m in enumerate(members):
        d = dosage[:, m]
        for k in range(3):
            out[k, g] = (d == k).mean(axis=1)
        out[3, g] = d.mean(axis=1) / 2
    return out


def read_sample_annotations(store: Any) -> SampleAnnotations | None:
    """The annotations a store was built with, or None."""
    if "annotations" not in store.meta:
        return None
    root = store.root
    pop, super_pop, gender = (
        np.asarray(root[f"samples_{name}"][:].tolist(), dtype=str) for name in ("pop", "super_pop", "gender")
    )
    return SampleAnnotations(pop, super_pop, gender, source=store.meta["annotations"]["source"])


def read_frequencies(store: Any, start: int = 0, stop: int | None = None) -> tuple[list[str], np.ndarray] | None:
    """(groups, float32 [4, n_groups + 1, stop - start]) of sites [start, stop), or None without annotations."""
    if "annotations" not in store.meta:
        return None
    stop = store.n_sites if stop is None else stop
    return list(store.meta["annotations"]["groups"]), np.asarray(store.root["frequencies"][:, :, start:stop])
