"""Genomic windows: half-open site ranges ``[start, end)`` that never span two contigs.

Site indices count the store's sites from 0 over the whole panel, contig after contig. Explicit
tables (a windows CSV, e.g. VCF-Bert's segments file) are checked before and after a build:
every problem is a one-line :class:`InputError` naming the window (or the CSV line); sites left
outside every window are only a :class:`InputWarning`.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from vcfstore.errors import InputError, InputWarning

ContigRuns = Sequence[tuple[str, int, int]]
"""Per contig, in store order: (name, first site, one past the last site)."""

START_COLUMNS = ("start", "start_index", "start_idx", "begin")
END_COLUMNS = ("end", "end_index", "end_idx", "stop")
INDEX_COLUMNS = ("", "idx", "index", "window", "unnamed: 0")  # a row number (pandas writes an unnamed one): ignored
_MAX_INDEX = 1 << 40  # far beyond any panel (and any bp position): a typo, or not an index at all
_INT = re.compile(r"[+-]?\d+")


def fixed_windows(runs: ContigRuns, size: int, overlap: int = 0) -> np.ndarray:
    """Windows of ``size`` sites stepping by ``size - overlap``, restarted at every contig.

    The last window of a contig ends at the contig's end and is shorter when the sites do not
    divide evenly; a window whose sites are all covered by the window before it is not made.
    """
    check_window_size(size, overlap)
    step = size - overlap
    out: list[tuple[int, int]] = []
    for _, first, stop in runs:
        start = first
        while True:
            end = min(start + size, stop)
            out.append((start, end))
            if end >= stop:
                break
            start += step
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def check_window_size(size: int, overlap: int) -> None:
    if size < 1:
        raise InputError(f"window size must be at least 1 site, not {size}")
    if not 0 <= overlap < size:
        raise InputError(f"overlap must be in [0, window size) = [0, {size}), not {overlap}")


def read_csv_rows(path: str | os.PathLike[str]) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a windows CSV with their 1-based line numbers (one-line errors)."""
    try:
        with open(path, newline="") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if r and any(c.strip() for c in r)]
    except OSError as e:
        raise InputError(f"cannot read windows file {path}: {e.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise InputError(f"windows file {path} is not a readable CSV file ({e})") from None
    return rows


def read_windows_csv(path: str | os.PathLike[str], *, allow_overlap: bool = False) -> np.ndarray:
    """Read ``[start, end)`` site indices from a CSV file.

    With a header, the start column is named one of ``start``, ``start_index``, ``start_idx``,
    ``begin`` and the end column one of ``end``, ``end_index``, ``end_idx``, ``stop`` (any
    case); a row-number column (``idx``, ``index``, ``window`` or unnamed) is ignored; any other
    column is an error. Without a header the file has exactly two columns,
    start and end. Values are 0-based site indices into the whole panel, ``end`` exclusive;
    rows are sorted by start and, unless ``allow_overlap``, do not overlap.

    Returns
    -------
    array [n_windows, 2] of int64
        Checked as far as possible without the panel; :func:`check_windows` checks the rest.
    """
    rows = read_csv_rows(path)
    if not rows:
        raise InputError(f"windows file {path} is empty")
    cols = _columns(path, rows[0][1])
    if cols is None:
        cols = (0, 1)
        for n, r in rows:
            if len(r) != 2:
                raise InputError(
                    f"windows file {path} line {n}: {len(r)} columns; a file without a header has exactly two "
                    "(start, end)"
                )
    else:
        rows = rows[1:]
    if not rows:
        raise InputError(f"windows file {path} has no windows")
    lines = [n for n, _ in rows]
    windows = np.asarray([[_index(path, n, r, c) for c in cols] for n, r in rows], dtype=np.int64)
    _check(windows, None, None, allow_overlap, lambda w: f"line {lines[w]}", f"windows file {path}: ")
    return windows


def _columns(path: str | os.PathLike[str], first: list[str]) -> tuple[int, int] | None:
    """The (start, end) columns named by a header row, or None when the first row is data."""
    cells = [c.strip().lower() for c in first]
    if all(_INT.fullmatch(c) for c in cells):
        return None
    unknown = [c for c in cells if c not in START_COLUMNS + END_COLUMNS + INDEX_COLUMNS]
    if unknown:
        raise InputError(
            f"windows file {path}: unknown column(s) {', '.join(repr(c) for c in unknown)} in the header; "
            f"expected a start column ({'/'.join(START_COLUMNS)}) and an end column ({'/'.join(END_COLUMNS)})"
        )
    starts = [i for i, c in enumerate(cells) if c in START_COLUMNS]
    ends = [i for i, c in enumerate(cells) if c in END_COLUMNS]
    if len(starts) != 1 or len(ends) != 1:
        raise InputError(
            f"windows file {path}: the header needs exactly one start and one end column, got {', '.join(cells)}"
        )
    return starts[0], ends[0]


def _index(path: str | os.PathLike[str], line: int, row: list[str], col: int) -> int:
    cell = row[col].strip() if col < len(row) else ""
    if not _INT.fullmatch(cell):
        raise InputError(f"windows file {path} line {line}: {cell!r} is not an integer site index")
    value = int(cell)
    if abs(value) >= _MAX_INDEX:
        raise InputError(f"windows file {path} line {line}: {cell} is far too large to be a site index")
    return value


def check_windows(
    windows: np.ndarray, max_sites: int, runs: ContigRuns | None = None, *, allow_overlap: bool = False
) -> np.ndarray:
    """Validate a window table; with ``runs`` also check bounds and contigs.

    Parameters
    ----------
    windows : array [n_windows, 2]
        Half-open site ranges, sorted by start.
    max_sites : int
        The most sites a window may hold (``max_seq_len - 2``).
    runs : contig runs, optional
        The store's contigs; when given, windows must lie inside the panel and inside one
        contig, and sites outside every window give an :class:`InputWarning` with their count.
    allow_overlap : bool
        Accept windows that share sites (fixed windows with an overlap are made that way).

    Returns
    -------
    array [n_windows, 2] of int64

    Raises
    ------
    InputError
        Naming the first window that is reversed, empty, too long, out of order, overlapping,
        out of range or spanning two contigs, and explaining a per-contig index table.
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] != 2 or len(windows) == 0:
        raise InputError(f"windows must be a non-empty [n_windows, 2] table, got shape {windows.shape}")
    if not np.issubdtype(windows.dtype, np.integer):
        raise InputError(f"windows must hold integer site indices, not {windows.dtype}")
    windows = windows.astype(np.int64)
    _check(windows, max_sites, runs, allow_overlap, lambda w: f"window {w}", "")
    return windows


def _check(
    windows: np.ndarray,
    max_sites: int | None,
    runs: ContigRuns | None,
    allow_overlap: bool,
    label: Callable[[int], str],
    where: str,
) -> None:
    """Raise the first problem of a window table as ``where`` + a sentence naming windows by ``label``."""
    starts, ends = windows[:, 0], windows[:, 1]

    def fail(message: str) -> InputError:
        return InputError(where + message)

    def show(w: int) -> str:
        return f"{label(w)} = [{starts[w]}, {ends[w]})"

    for bad, what in (
        (starts < 0, "starts at a negative site index"),
        (ends < starts, "is reversed (end before start)"),
        (ends == starts, "is empty (end equals start; end is exclusive)"),
    ):
        if bad.any():
            raise fail(f"{show(int(np.flatnonzero(bad)[0]))} {what}")
    lengths = ends - starts
    if max_sites is not None and (lengths > max_sites).any():
        w = int(np.flatnonzero(lengths > max_sites)[0])
        raise fail(
            f"{label(w)} has {lengths[w]} sites; at most max_seq_len - 2 = {max_sites} fit "
            "(raise max_seq_len or use smaller windows)"
        )
    back = np.flatnonzero(np.diff(starts) < 0)
    if back.size:
        w = int(back[0]) + 1
        if starts[w] == 0:
            raise fail(
                f"{show(w)} starts again at site 0 after {show(w - 1)}: this looks like a per-contig index table "
                "(indices restarting at 0 for each contig); site indices count the whole panel's sites, contig "
                "after contig: add each contig's first site index, or build one store per contig"
            )
        raise fail(f"windows must be sorted by start site: {show(w)} comes after {show(w - 1)}")
    if not allow_overlap:
        over = np.flatnonzero(starts[1:] < ends[:-1])
        if over.size:
            w = int(over[0]) + 1
            raise fail(
                f"{show(w)} overlaps {show(w - 1)}; "
                "pass allow_overlap=True (--allow-overlap) if windows may share sites"
            )
    if runs is None:
        return
    n_sites = runs[-1][2] if runs else 0
    if (ends > n_sites).any():
        w = int(np.flatnonzero(ends > n_sites)[0])
        raise fail(
            f"{show(w)} ends at site {ends[w]} but the panel has {n_sites} sites (windows hold site indices, "
            "not bp positions)"
        )
    run_starts = np.asarray([r[1] for r in runs])
    first = np.searchsorted(run_starts, starts, side="right") - 1
    last = np.searchsorted(run_starts, ends - 1, side="right") - 1
    if (first != last).any():
        w = int(np.flatnonzero(first != last)[0])
        raise fail(f"{show(w)} spans contigs {runs[first[w]][0]} and {runs[last[w]][0]}")
    # Sites covered: sorted by start, so a window adds the part past the furthest end before it.
    reach = np.maximum.accumulate(np.concatenate([[0], ends[:-1]]))
    covered = int(np.clip(ends - np.maximum(starts, reach), 0, None).sum())
    if covered < n_sites:
        gaps = int((starts > reach).sum()) + int(ends.max() < n_sites)
        warnings.warn(
            f"the windows leave {n_sites - covered} of the panel's {n_sites} sites outside every window "
            f"({gaps} gap(s)); those sites are never served",
            InputWarning,
            stacklevel=3,
        )
