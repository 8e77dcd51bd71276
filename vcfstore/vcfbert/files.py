"""VCF-Bert's own files: the ``.panel`` file, the frequency table (``freq.npy``) and the segments CSV.

Read and written in VCF-Bert's formats, so a VCF-Bert user's files work unchanged and the
example can write files VCF-Bert itself would read:

* ``.panel`` (1000 Genomes): a header line, then ``sample pop super_pop gender`` per sample,
  whitespace-separated. VCF-Bert drops the first line whatever it says and takes column 2 as the
  population; its vocabulary and frequency table index the *sorted* super-populations of every
  line of the file, then ``Global``.
* ``freq.npy``: float32 ``[4, n_groups + 1, n_sites]``: axis 0 = hom-ref, het, hom-alt genotype
  frequency and ALT allele frequency (its ``REF=0, HET=1, HOM=2, AF=3``), axis 1 = the groups
  above, axis 2 = one row per record of the VCF it was made from.
* segments CSV (``segments_chr21.maf.csv``): a header row whose names are ignored, then
  ``start, end`` per window in the first two columns: 0-based record indices, ``end`` exclusive.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcfstore._fileio import atomic_write_bytes
from vcfstore.errors import InputError
from vcfstore.store.annotations import GLOBAL_GROUP
from vcfstore.store.windows import check_windows, read_csv_rows

MAX_SEQ_LEN = 1030  # tokens per window: [SOS] sites [EOS] pad
INFER_WINDOW_LEN = 1020  # sites per inference window (consecutive sites of the reference)
REF, HET, HOM, AF = 0, 1, 2, 3  # axis 0 of the frequency table
FREQUENCY_LAYERS = 4


@dataclass(frozen=True)
class PanelFile:
    """Every line of a ``.panel`` file after the header, in file order."""

    samples: np.ndarray  # str [n_lines]
    pops: np.ndarray  # str [n_lines]
    super_pops: np.ndarray  # str [n_lines]

    @property
    def groups(self) -> list[str]:
        """The frequency table's groups as VCF-Bert indexes them: sorted super-populations, then Global."""
        return [*sorted(set(self.super_pops.tolist())), GLOBAL_GROUP]


def read_panel_file(path: str | os.PathLike[str]) -> PanelFile:
    """Read a 1000 Genomes ``.panel`` file as VCF-Bert does: the first line is a header, column 2 the population.

    Raises
    ------
    InputError
        The file cannot be read, has no sample line, or a line has fewer than three columns.
    """
    path = Path(path)
    try:
        lines = [line.split() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read sample panel {path}: {getattr(e, 'strerror', None) or e}") from None
    rows = [(n, fields) for n, fields in enumerate(lines[1:], start=2) if fields]
    if not rows:
        raise InputError(f"sample panel {path} has no sample lines after its header")
    for n, fields in rows:
        if len(fields) < 3:
            raise InputError(f"sample panel {path} line {n}: {len(fields)} columns; need sample, pop and super_pop")
    cols = [np.asarray([fields[c] for _, fields in rows], dtype=str) for c in range(3)]
    return PanelFile(*cols)


def write_panel_file(
    path: str | os.PathLike[str],
    samples: list[str] | np.ndarray,
    pops: list[str] | np.ndarray,
    super_pops: list[str] | np.ndarray,
    genders: list[str] | np.ndarray | None = None,
) -> Path:
    """Write a 1000 Genomes ``.panel`` file (tab-separated, with its header line)."""
    genders = ["unknown"] * len(samples) if genders is None else genders
    lines = ["sample\tpop\tsuper_pop\tgender"]
    lines += ["\t".join(map(str, row)) for row in zip(samples, pops, super_pops, genders, strict=True)]
    return _write(path, ("\n".join(lines) + "\n").encode())


def read_frequency_table(path: str | os.PathLike[str] | np.ndarray) -> np.ndarray:
    """VCF-Bert's ``freq.npy`` (or an array in its layout), checked: float32 ``[4, n_groups + 1, n_sites]``.

    Raises
    ------
    InputError
        Not a NumPy file, another shape, NaN, or values outside [0, 1].
    """
    name = "frequency table" if isinstance(path, np.ndarray) else f"frequency table {path}"
    if isinstance(path, np.ndarray):
        table = path
    else:
        try:
            table = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise InputError(f"cannot read {name}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(table, np.ndarray) or table.ndim != 3 or table.shape[0] != FREQUENCY_LAYERS:
        shape = getattr(table, "shape", None)
        raise InputError(f"{name} has shape {shape}; VCF-Bert's layout is [4, n_groups + 1, n_sites]")
    if table.shape[1] < 2 or table.shape[2] < 1:
        raise InputError(f"{name} has shape {table.shape}: it needs a group, the Global column and a site")
    if not np.issubdtype(table.dtype, np.floating):
        raise InputError(f"{name} holds {table.dtype}; frequencies are floats")
    table = table.astype(np.float32, copy=False)
    if np.isnan(table).any():
        raise InputError(f"{name} has {int(np.isnan(table).sum())} NaN values")
    if (table < 0).any() or (table > 1).any():
        raise InputError(f"{name} has values outside [0, 1]")
    return table


def write_frequency_table(path: str | os.PathLike[str], table: np.ndarray) -> Path:
    """Save a frequency table as VCF-Bert's ``freq.npy`` (float32 ``[4, n_groups + 1, n_sites]``)."""
    table = read_frequency_table(np.asarray(table, dtype=np.float32))
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    return _write(path, buf.getvalue())


def read_segments_csv(
    path: str | os.PathLike[str], *, max_sites: int = MAX_SEQ_LEN - 2, limit: int | None = None
) -> np.ndarray:
    """VCF-Bert's windows CSV as int64 ``[n_windows, 2]`` half-open record ranges.

    As VCF-Bert reads it: the first row is a header (its names are ignored) and the first two
    columns are start and end (0-based record indices, end exclusive); ``limit`` keeps the first
    windows. Windows may overlap (VCF-Bert accepts that); each must hold at most ``max_sites``.

    Raises
    ------
    InputError
        Naming the line that is not two integers, or the first window that is empty, reversed,
        out of order or too long.
    """
    rows = read_csv_rows(path)
    rows = rows[1:]  # VCF-Bert always drops the first row
    if not rows:
        raise InputError(f"windows file {path} has no windows after its header row")
    out = np.empty((len(rows), 2), dtype=np.int64)
    for i, (n, r) in enumerate(rows):
        try:
            out[i] = [int(r[0]), int(r[1])]
        except (ValueError, IndexError):
            raise InputError(f"windows file {path} line {n}: {r[:2]} is not a start and an end record index") from None
    if limit is not None:
        if not 1 <= limit <= len(out):
            raise InputError(f"windows limit must be in [1, {len(out)}], not {limit}")
        out = out[:limit]
    try:
        return check_windows(out, max_sites, allow_overlap=True)
    except InputError as e:
        raise InputError(f"windows file {path}: {e}") from None


def write_segments_csv(path: str | os.PathLike[str], windows: np.ndarray) -> Path:
    """Write windows as VCF-Bert's segments CSV: header ``start,end``, then one row per window."""
    windows = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    text = "start,end\n" + "".join(f"{a},{b}\n" for a, b in windows.tolist())
    return _write(path, text.encode())


def _write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a file atomically, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path
