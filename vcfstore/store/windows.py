"""Genomic windows: half-open site ranges ``[start, end)`` that never span two contigs."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from vcfstore.errors import InputError

ContigRuns = Sequence[tuple[str, int, int]]
"""Per contig, in store order: (name, first site, one past the last site)."""


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


def read_windows_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``[start, end)`` site indices from a CSV file.

    The columns named ``start`` and ``end`` (any case) are used when there is a header; without
    one, the first two columns. Rows must be sorted by start.
    """
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError as e:
        raise InputError(f"cannot read windows file {path}: {e.strerror}") from None
    if not rows:
        raise InputError(f"windows file {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    cols = (0, 1)
    if not _is_int(header[0]):
        if "start" in header and "end" in header:
            cols = (header.index("start"), header.index("end"))
        rows = rows[1:]
    try:
        windows = np.asarray([(int(r[cols[0]]), int(r[cols[1]])) for r in rows], dtype=np.int64)
    except (ValueError, IndexError):
        raise InputError(f"windows file {path}: every row needs integer start and end site indices") from None
    if len(windows) == 0:
        raise InputError(f"windows file {path} has no windows")
    return windows.reshape(-1, 2)


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def check_windows(windows: np.ndarray, max_sites: int, runs: ContigRuns | None = None) -> np.ndarray:
    """Validate a window table; with ``runs`` also check bounds and contigs.

    Parameters
    ----------
    windows : array [n_windows, 2]
        Half-open site ranges.
    max_sites : int
        The most sites a window may hold (``max_seq_len - 2``).
    runs : contig runs, optional
        The store's contigs; when given, windows must lie inside the panel and inside one contig.
    """
    windows = np.asarray(windows, dtype=np.int64)
    if windows.ndim != 2 or windows.shape[1] != 2 or len(windows) == 0:
        raise InputError(f"windows must be a non-empty [n_windows, 2] table, got shape {windows.shape}")
    lengths = windows[:, 1] - windows[:, 0]
    if (windows[:, 0] < 0).any() or (lengths <= 0).any():
        w = int(np.flatnonzero((windows[:, 0] < 0) | (lengths <= 0))[0])
        raise InputError(f"window {w} = [{windows[w, 0]}, {windows[w, 1]}) is empty or negative")
    if (lengths > max_sites).any():
        w = int(np.argmax(lengths))
        raise InputError(
            f"window {w} has {lengths[w]} sites; at most max_seq_len - 2 = {max_sites} fit "
            "(raise max_seq_len or use smaller windows)"
        )
    if (np.diff(windows[:, 0]) < 0).any():
        raise InputError("windows must be sorted by start site")
    if runs is not None:
        n_sites = runs[-1][2] if runs else 0
        if windows[:, 1].max() > n_sites:
            w = int(np.argmax(windows[:, 1]))
            raise InputError(f"window {w} ends at site {windows[w, 1]} but the panel has {n_sites} sites")
        starts = np.asarray([r[1] for r in runs])
        first = np.searchsorted(starts, windows[:, 0], side="right") - 1
        last = np.searchsorted(starts, windows[:, 1] - 1, side="right") - 1
        if (first != last).any():
            w = int(np.flatnonzero(first != last)[0])
            raise InputError(
                f"window {w} = [{windows[w, 0]}, {windows[w, 1]}) spans contigs "
                f"{runs[first[w]][0]} and {runs[last[w]][0]}"
            )
    return windows
