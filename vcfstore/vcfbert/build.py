"""Building stores from VCF-Bert's files with its site indexing (one site per VCF record).

VCF-Bert reads genotypes as ``GT[GT > 0] = 1``: every record is one site, a multiallelic one
collapsed (any ALT = 1), indels kept, so its windows CSV and frequency table index records.
:func:`build_panel` builds a store that way (``InputPolicy(multiallelic="collapse",
non_snv="keep")``), windows from the CSV, AF from the frequency table's global column, and
reuses a finished store at the same path built from the same file and parameters.
:func:`build_stores` builds the training cohort and the reference panel together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vcfstore.errors import InputError, StoreError
from vcfstore.sources import InputPolicy, SiteSource, open_source
from vcfstore.store.annotations import SampleAnnotations
from vcfstore.store.builder import build_store
from vcfstore.store.reader import PanelStore, open_store
from vcfstore.vcfbert.features import check_same_sites, population_features
from vcfstore.vcfbert.files import AF, INFER_WINDOW_LEN, MAX_SEQ_LEN, read_frequency_table, read_segments_csv

Missing = Literal["error", "ref"]


def vcfbert_policy(missing: Missing = "error") -> InputPolicy:
    """VCF-Bert's site indexing: one site per record (multiallelic collapsed, indels kept).

    ``missing``: VCF-Bert keeps a missing allele as -1, which becomes label -1 and token UNK
    (the loss cannot take it). Here a missing genotype stops the build (``"error"``), or is read
    as REF (``"ref"``); skipping sites would shift every record index of the windows CSV.
    """
    if missing not in ("error", "ref"):
        raise InputError(f"missing must be 'error' or 'ref' for a VCF-Bert panel, not {missing!r}")
    return InputPolicy(multiallelic="collapse", non_snv="keep", missing=missing)


def store_path(
    vcf_path: str | os.PathLike[str], store_dir: str | os.PathLike[str] | None = None, suffix: str = ""
) -> Path:
    """Where the store of ``vcf_path`` goes: ``<file><suffix>.vcfstore`` beside it, or in ``store_dir``."""
    vcf_path = Path(vcf_path)
    return (Path(store_dir) if store_dir is not None else vcf_path.parent) / f"{vcf_path.name}{suffix}.vcfstore"


def build_panel(
    source: str | os.PathLike[str] | SiteSource,
    out: str | os.PathLike[str],
    *,
    windows: str | os.PathLike[str] | np.ndarray | None = None,
    window_size: int | None = None,
    af: np.ndarray | None = None,
    annotations: str | os.PathLike[str] | SampleAnnotations | None = None,
    missing: Missing = "error",
    max_seq_len: int = MAX_SEQ_LEN,
    force: bool = False,
    progress: bool = True,
) -> PanelStore:
    """Build (or reuse) a store with VCF-Bert's site indexing.

    Parameters
    ----------
    source : path or site source
        A VCF/BCF file or VCF Zarr directory (read with :func:`vcfbert_policy`), or a source.
    out : path
        The store. A finished store there built from the same input with the same windows, AF,
        annotations and policy is opened and returned; one built otherwise is rebuilt.
    windows : path or array [W, 2], optional
        VCF-Bert's segments CSV (record indices) or the table itself.
    window_size : int, optional
        Consecutive windows of this many sites instead (VCF-Bert's inference: 1020, the default
        when ``windows`` is not given).
    af : array [n_sites], optional
        The allele frequency the store records (VCF-Bert's global AF, ``freq[3, -1]``); by
        default computed from the panel.
    annotations : path or SampleAnnotations, optional
        The samples' ``.panel`` file (paired by sample name).
    missing : {"error", "ref"}
        See :func:`vcfbert_policy`.

    Raises
    ------
    InputError
        The input, windows or frequencies do not fit (e.g. the AF has another length than the
        records kept).
    """
    if isinstance(source, (str, os.PathLike)):
        source = open_source(source, policy=vcfbert_policy(missing))
    if windows is not None and window_size is not None:
        raise InputError("windows come from a CSV (windows=) or from window_size=, not both")
    table = None
    if windows is not None:
        table = windows if isinstance(windows, np.ndarray) else read_segments_csv(windows, max_sites=max_seq_len - 2)
    elif window_size is None:
        window_size = INFER_WINDOW_LEN
    af = None if af is None else np.asarray(af, dtype=np.float32)
    if annotations is not None and not isinstance(annotations, SampleAnnotations):
        annotations = SampleAnnotations.from_panel_file(annotations, source.samples)
    out = Path(out)
    if not force:
        existing = _finished_store(out)
        if existing is not None and _built_as(existing, source, table, window_size, af, annotations, max_seq_len):
            return existing
        force = existing is not None
    kwargs: dict[str, Any] = {"windows": table, "allow_overlap": True} if table is not None else {}
    kwargs["window_size"] = window_size
    try:
        return build_store(
            source,
            out,
            **kwargs,
            max_seq_len=max_seq_len,
            af_from="panel" if af is None else af,
            annotations=annotations,
            force=force,
            progress=progress,
        )
    except InputError as e:
        if af is not None and "supplied allele frequencies" in str(e):
            raise InputError(f"the frequency table does not fit {out.name}: {e}") from None
        raise


def _finished_store(out: Path) -> PanelStore | None:
    try:
        return open_store(out)
    except StoreError:
        return None  # nothing there, or an unfinished build that build_store resumes or names


def _built_as(
    store: PanelStore,
    source: SiteSource,
    windows: np.ndarray | None,
    window_size: int | None,
    af: np.ndarray | None,
    annotations: SampleAnnotations | None,
    max_seq_len: int,
) -> bool:
    """Whether ``store`` was built from ``source`` with these parameters (then it is reused)."""
    params = store.meta["params"]
    if store.meta["input"].get("sha256") != source.describe().get("sha256"):
        return False
    if params["policy"] != source.policy.to_dict() or params["max_seq_len"] != max_seq_len:
        return False
    if windows is not None and not np.array_equal(store.windows, windows):
        return False
    if windows is None and (params["window_size"] != window_size or params["overlap"]):
        return False
    if (af is None) != (params["af_from"] == "panel") or (af is not None and not np.array_equal(store.af, af)):
        return False
    return params.get("annotations_sha256") == (annotations.digest() if annotations is not None else None)


@dataclass
class VcfBertStores:
    """A training cohort and its reference panel over the same sites and windows, with the frequency table."""

    cohort: PanelStore
    reference: PanelStore | None
    frequencies: np.ndarray  # float32 [4, n_groups + 1, n_sites]
    groups: list[str]

    def dataset(self, **kwargs: Any) -> Any:
        """A :class:`~vcfstore.vcfbert.VcfBertDataset` over these stores (keyword arguments go to it)."""
        from vcfstore.vcfbert.dataset import VcfBertDataset

        return VcfBertDataset(self.cohort, self.reference, frequencies=self.frequencies, groups=self.groups, **kwargs)


def build_stores(
    out_dir: str | os.PathLike[str],
    *,
    training: str | os.PathLike[str] | SiteSource,
    windows: str | os.PathLike[str] | np.ndarray,
    reference: str | os.PathLike[str] | SiteSource | None = None,
    panel: str | os.PathLike[str] | None = None,
    frequencies: str | os.PathLike[str] | np.ndarray | None = None,
    groups: list[str] | None = None,
    missing: Missing = "error",
    max_seq_len: int = MAX_SEQ_LEN,
    force: bool = False,
    progress: bool = True,
) -> VcfBertStores:
    """Build the cohort and reference stores of a VCF-Bert run from its files.

    Parameters
    ----------
    out_dir : path
        The stores go to ``out_dir/cohort.vcfstore`` and ``out_dir/reference.vcfstore``.
    training, reference : path or site source
        The training VCF and the reference panel VCF (the same records).
    windows : path or array
        VCF-Bert's segments CSV.
    panel : path, optional
        The ``.panel`` file of the training samples (needed when ``frequencies`` is None).
    frequencies : path or array, optional
        VCF-Bert's ``freq.npy``; default: computed from the training cohort per super-population.
    groups : list of str, optional
        The table's groups (default: the ``.panel`` file's sorted super-populations, then Global).
    """
    out_dir = Path(out_dir)
    table = None if frequencies is None else read_frequency_table(frequencies)
    af = None if table is None else table[AF, -1]
    if table is None and panel is None:
        raise InputError("without frequencies= the table is computed from the cohort: pass panel= (its .panel file)")
    common: dict[str, Any] = {
        "windows": windows,
        "missing": missing,
        "max_seq_len": max_seq_len,
        "force": force,
        "progress": progress,
    }
    cohort = build_panel(training, out_dir / "cohort.vcfstore", af=af, annotations=panel, **common)
    features = population_features(
        cohort, cohort.samples, frequencies=table, groups=groups, panel=panel, annotated_store=cohort
    )
    ref_store = None
    if reference is not None:
        ref_store = build_panel(reference, out_dir / "reference.vcfstore", af=features.global_af, **common)
        check_same_sites(cohort, ref_store, features)
    return VcfBertStores(cohort, ref_store, features.table, features.groups)
