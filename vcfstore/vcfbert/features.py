"""Per-window inputs every VCF-Bert item carries besides its alleles: positions and frequencies.

VCF-Bert feeds its model the window's bp positions min-max normalised, the global AF (the same
vector for queries and references) and the sample's population AF and genotype frequencies,
each laid out like the tokens: 0 at SOS, the values at token positions 1..n, zeros after.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vcfstore.errors import InputError
from vcfstore.store.annotations import GLOBAL_GROUP, SampleAnnotations, read_frequencies, read_sample_annotations
from vcfstore.store.reader import PanelStore
from vcfstore.store.vocab import Vocabulary, pad_sites
from vcfstore.vcfbert.files import AF, HET, HOM, REF, read_frequency_table, read_panel_file


def normalised_positions(positions: np.ndarray) -> np.ndarray:
    """``(p - min) / (max - min)`` over a window's bp positions, float64.

    VCF-Bert divides by zero (NaN for every site) when all of a window's sites share one
    position; here such a window gets 0 everywhere.
    """
    p = np.asarray(positions, dtype=np.float64)
    span = p.max() - p.min()
    return (p - p.min()) / span if span > 0 else np.zeros_like(p)


@dataclass
class PopulationFeatures:
    """A frequency table in VCF-Bert's layout and the table group of every sample.

    Attributes
    ----------
    table : float32 [4, n_groups + 1, n_sites]
        Hom-ref, het, hom-alt genotype frequencies and AF; the last group is Global.
    groups : list of str
        The table's groups (sorted super-populations, then Global).
    sample_group : int64 [n_samples]
        Each sample's row of axis 1 (its super-population).
    """

    table: np.ndarray
    groups: list[str]
    sample_group: np.ndarray

    @property
    def global_af(self) -> np.ndarray:
        """float32 [n_sites]: VCF-Bert's ``af``, the same vector for queries and references."""
        return self.table[AF, -1]

    def padded(self, sites: range, sample: int, max_seq_len: int) -> dict[str, np.ndarray]:
        """``af``, ``af_p``, ``ref``, ``het``, ``hom`` of one sample in one window, float32 [max_seq_len]."""
        sl, g = slice(sites.start, sites.stop), int(self.sample_group[sample])
        t = self.table
        return {
            "af": pad_sites(t[AF, -1, sl], max_seq_len),
            "af_p": pad_sites(t[AF, g, sl], max_seq_len),
            "ref": pad_sites(t[REF, g, sl], max_seq_len),
            "het": pad_sites(t[HET, g, sl], max_seq_len),
            "hom": pad_sites(t[HOM, g, sl], max_seq_len),
        }


def population_features(
    sites_store: PanelStore,
    samples: np.ndarray,
    *,
    frequencies: str | os.PathLike[str] | np.ndarray | None,
    groups: list[str] | None,
    panel: str | os.PathLike[str] | SampleAnnotations | None,
    annotated_store: PanelStore | None,
    global_without_panel: bool = False,
) -> PopulationFeatures:
    """Resolve the frequency table, its groups and every sample's group.

    Parameters
    ----------
    sites_store : PanelStore
        Whose sites the table's rows are (one row per site, in store order).
    samples : array of str
        The samples items are made for.
    frequencies : path, array or None
        VCF-Bert's ``freq.npy``; None takes the table ``sites_store`` computed at build from
        its ``.panel`` file.
    groups : list of str, optional
        The table's groups; by default those of the ``.panel`` file (sorted super-populations of
        every line, then Global, as VCF-Bert indexes them), else the store's.
    panel : path or SampleAnnotations, optional
        The samples' populations (paired by sample name); by default ``annotated_store``'s.
    annotated_store : PanelStore, optional
        A store built with the samples' ``.panel`` file.
    global_without_panel : bool
        Samples without populations get the Global column (else that is an :class:`InputError`).
    """
    if frequencies is None:
        stored = read_frequencies(sites_store)
        if stored is None:
            raise InputError(
                f"{_name(sites_store)} has no frequency table: pass frequencies= (VCF-Bert's freq.npy) or build the "
                "store with its .panel file (annotations=)"
            )
        store_groups, table = stored
        groups = groups or store_groups
    else:
        table = read_frequency_table(frequencies if isinstance(frequencies, np.ndarray) else Path(frequencies))
    if table.shape[2] != sites_store.n_sites:
        raise InputError(
            f"the frequency table has {table.shape[2]} sites but {_name(sites_store)} has {sites_store.n_sites}: "
            "VCF-Bert's table has one row per record of the VCF it was made from, and the store one site per record"
        )
    if isinstance(panel, SampleAnnotations):
        annotations: SampleAnnotations | None = panel
    elif panel is not None:
        annotations = SampleAnnotations.from_panel_file(panel, samples)
        groups = groups or read_panel_file(panel).groups
    else:
        annotations = read_sample_annotations(annotated_store) if annotated_store is not None else None
    if annotations is None:
        if not global_without_panel:
            raise InputError("the samples have no populations: pass panel= (their .panel file)")
        names = list(groups or [*(f"group{i}" for i in range(table.shape[1] - 1)), GLOBAL_GROUP])
        return PopulationFeatures(table, names, np.full(len(samples), table.shape[1] - 1, dtype=np.int64))
    groups = list(groups or annotations.groups)
    if len(groups) != table.shape[1]:
        raise InputError(
            f"the frequency table has {table.shape[1]} groups but {len(groups)} are named ({', '.join(groups)}); "
            "pass groups= in the table's order (sorted super-populations, then Global)"
        )
    index = {g: i for i, g in enumerate(groups)}
    unknown = sorted(set(annotations.super_pop.tolist()) - set(index))
    if unknown:
        raise InputError(
            f"super-population(s) {', '.join(unknown)} of the samples are not among the frequency table's groups "
            f"({', '.join(groups)})"
        )
    sample_group = np.asarray([index[p] for p in annotations.super_pop], dtype=np.int64)
    return PopulationFeatures(table, groups, sample_group)


def check_same_sites(store: PanelStore, reference: PanelStore, features: PopulationFeatures) -> None:
    """A reference must hold the cohort's sites and windows, with the table's global AF as its AF.

    VCF-Bert encodes references with the global AF of the frequency table; vcfstore's retriever
    encodes them with the reference store's AF, so the two must be the same vector.
    """
    if reference.n_sites != store.n_sites or not np.array_equal(reference.positions, store.positions):
        raise InputError(
            f"the reference {reference.path} and {_name(store)} must hold the same sites "
            f"({reference.n_sites} and {store.n_sites} sites, positions differ): build both from VCFs of one site list"
        )
    if not np.array_equal(reference.windows, store.windows):
        raise InputError(f"the reference {reference.path} and {_name(store)} must have the same windows")
    check_reference_af(reference, features)


def check_reference_af(reference: PanelStore, features: PopulationFeatures) -> None:
    """The reference store's AF must be the table's global AF (VCF-Bert encodes references with it)."""
    if not np.array_equal(reference.af, features.global_af):
        raise InputError(
            f"the reference {reference.path} was built with other allele frequencies than the frequency table's "
            "global AF, which VCF-Bert encodes references with: build it with vcfstore.vcfbert.build_panel(..., af=)"
        )


def as_tensors(item: dict[str, Any]) -> dict[str, Any]:
    """NumPy arrays of an item as tensors (int64 and float32 stay as they are); other values unchanged."""
    import torch

    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in item.items()}


@dataclass(frozen=True)
class WindowTable:
    """VCF-Bert's ``Window``: ``window_info`` int64 [W, 2] half-open site ranges."""

    window_info: np.ndarray


def vocab_view(vocab: Vocabulary) -> types.SimpleNamespace:
    """The token ids under VCF-Bert's ``Vocab`` attribute names (``mask_index`` and the like)."""
    return types.SimpleNamespace(
        pad_index=vocab.pad, unk_index=vocab.unk, sos_index=vocab.sos, eos_index=vocab.eos, mask_index=vocab.mask
    )


def checked_vocab(vocab: Any, store_vocab: Vocabulary) -> Any:
    """VCF-Bert's vocabulary if given (its allele and special ids must be the store's), else a view of the store's."""
    if vocab is None:
        return vocab_view(store_vocab)
    stoi = getattr(vocab, "stoi", None)
    want = {"<pad>": store_vocab.pad, "<mask>": store_vocab.mask, 0: store_vocab.allele0, 1: store_vocab.allele1}
    if stoi is not None and any(stoi.get(k) != v for k, v in want.items()):
        raise InputError(
            "the vocabulary's ids for <pad>, <mask> and alleles 0/1 differ from the store's "
            f"({ {k: stoi.get(k) for k in want} } against {want})"
        )
    return vocab


def _name(store: PanelStore) -> str:
    """A store's directory name for messages (a local path or a URL)."""
    return PurePosixPath(str(store.path)).name
