"""Allele frequencies from outside the panel: a table by site (TSV/CSV) or a NumPy array.

A table has a header naming its columns (any order, any case; other columns are ignored):
the contig (``chrom``, ``#chrom``, ``chr`` or ``contig``), the position (``pos`` or
``position``), ``ref``, ``alt`` and the frequency of ALT (``af``). Tab-separated when the header
holds a tab, else comma-separated; ``.gz`` files are read compressed. Its sites are matched to
the panel's as targets are (:mod:`vcfstore.store.align`): contigs with or without ``chr``, a
row with REF and ALT swapped gives ``1 - af``. Every panel site must be in the table; table
rows for sites the panel lacks are ignored (a genome-wide table serves every chromosome's
store). A ``.npy`` file holds one float per panel site, in store order.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore.errors import InputError
from vcfstore.store.align import SiteMatcher

_COLUMNS = {
    "contig": ("chrom", "#chrom", "chr", "contig"),
    "position": ("pos", "position"),
    "ref": ("ref",),
    "alt": ("alt",),
    "af": ("af",),
}


def check_frequencies(af: np.ndarray, what: str, where: Any = None) -> np.ndarray:
    """``af`` as float32 [n] if every value is a finite frequency in [0, 1], else an :class:`InputError`.

    ``where(i)`` names entry ``i`` in the message (default: its index).
    """
    af = np.asarray(af, dtype=np.float32)
    if af.ndim != 1:
        raise InputError(f"{what} have shape {af.shape}; expected one value per site")
    bad = np.flatnonzero(~((af >= 0) & (af <= 1)))  # NaN fails both
    if bad.size:
        i = int(bad[0])
        name = where(i) if where is not None else f"site {i}"
        raise InputError(
            f"{what} hold {float(af[i]):g} at {name} ({bad.size} such): each must be a finite value in [0, 1]"
        )
    return af


@dataclass(frozen=True)
class AfTable:
    """Allele frequencies by site (contig, position, REF, ALT), read from a TSV/CSV file."""

    contig: np.ndarray
    position: np.ndarray
    ref: np.ndarray
    alt: np.ndarray
    af: np.ndarray  # float32, validated
    source: str = ""

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> AfTable:
        """Read and validate a table; an :class:`InputError` names the file, line and problem."""
        path = Path(path)
        try:
            raw = path.read_bytes()
            text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
            raise InputError(f"cannot read AF table {path}: {getattr(e, 'strerror', None) or e}") from None
        header_line = text.split("\n", 1)[0]
        reader = csv.reader(io.StringIO(text), delimiter="\t" if "\t" in header_line else ",")
        header = [h.strip().lower() for h in next(reader, [])]
        col = {}
        for name, aliases in _COLUMNS.items():
            found = [header.index(a) for a in aliases if a in header]
            if not found:
                raise InputError(
                    f"AF table {path}: the header must name the columns chrom, pos, ref, alt and af "
                    f"(found: {', '.join(header) or 'nothing'})"
                )
            col[name] = found[0]
        rows = [r for r in reader if r and any(f.strip() for f in r)]
        width = max(col.values()) + 1
        short = next((i for i, r in enumerate(rows) if len(r) < width), None)
        if short is not None:
            raise InputError(f"AF table {path}, line {short + 2}: {len(rows[short])} fields, expected {len(header)}")

        def column(name: str) -> np.ndarray:
            return np.asarray([r[col[name]].strip() for r in rows], dtype=str)

        try:
            position = column("position").astype(np.int64)
        except (ValueError, OverflowError):
            line = next(i for i, r in enumerate(rows) if not r[col["position"]].strip().isdigit())
            raise InputError(
                f"AF table {path}, line {line + 2}: position {rows[line][col['position']]!r} is not an integer"
            ) from None
        if position.size and (position.min() < 1 or position.max() >= 1 << 40):
            line = int(np.flatnonzero((position < 1) | (position >= 1 << 40))[0])
            raise InputError(f"AF table {path}, line {line + 2}: position {position[line]} is out of range")
        try:
            af = column("af").astype(np.float64)
        except ValueError:
            line = next(i for i, r in enumerate(rows) if not _is_float(r[col["af"]]))
            raise InputError(
                f"AF table {path}, line {line + 2}: af {rows[line][col['af']]!r} is not a number"
            ) from None
        af = check_frequencies(af, f"the frequencies of AF table {path}", lambda i: f"line {i + 2}")
        return cls(column("contig"), position, column("ref"), column("alt"), af, source=path.name)

    def digest(self) -> str:
        """A hash of the table's content, part of a build's identity."""
        h = hashlib.sha256()
        for a in (self.contig, self.position, self.ref, self.alt, self.af):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def for_sites(self, sites: dict[str, np.ndarray], contig_runs: list[tuple[str, int, int]]) -> np.ndarray:
        """float32 [n_sites]: the table's AF of each of a panel's sites (``1 - af`` where REF/ALT are swapped).

        Raises
        ------
        InputError
            A panel site is not in the table, or the table lists a site twice.
        """
        matcher = SiteMatcher(sites, contig_runs, {})
        rows, site, flip = matcher.align(self.contig, self.position, self.ref, self.alt, 0)
        if matcher.counts["duplicate"]:
            raise InputError(f"AF table {self.source} lists {matcher.counts['duplicate']} sites twice")
        out = np.full(len(sites["position"]), np.nan, dtype=np.float32)
        out[site] = np.where(flip, 1 - self.af[rows], self.af[rows])
        lacking = np.flatnonzero(np.isnan(out))
        if lacking.size:
            i = int(lacking[0])
            first = f"{sites['contig'][i]}:{sites['position'][i]} {sites['ref'][i]}>{sites['alt'][i]}"
            raise InputError(
                f"AF table {self.source} lacks {lacking.size} of the panel's {len(out)} sites (the first: {first})"
            )
        return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class AfChoice:
    """Where a build takes its allele frequencies from (see :func:`choose_af`)."""

    label: str  # recorded in the store's provenance: panel, info, supplied or table:<file>
    values: np.ndarray | None = None  # one per panel site, known before the build
    table: AfTable | None = None  # matched to the panel's sites once they are known

    def digest(self) -> str | None:
        """A hash of supplied frequencies (part of the build's identity), or None."""
        if self.table is not None:
            return self.table.digest()
        return None if self.values is None else hashlib.sha256(self.values.tobytes()).hexdigest()


def choose_af(af_from: str | os.PathLike[str] | np.ndarray) -> AfChoice:
    """Validate ``af_from``: "panel", "info", an array [n_sites], a ``.npy`` file or a TSV/CSV table."""
    if isinstance(af_from, str) and af_from in ("panel", "info"):
        return AfChoice(af_from)
    if isinstance(af_from, (str, os.PathLike)):
        path = Path(af_from)
        if not path.is_file():
            raise InputError(f"af_from is 'panel', 'info' or an AF file; {path} is not a file")
        if path.suffix == ".npy":
            try:
                values = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read AF array {path}: {e}") from None
            return AfChoice(f"supplied:{path.name}", check_frequencies(values, f"the frequencies in {path}"))
        table = AfTable.read(path)
        return AfChoice(f"table:{path.name}", table=table)
    return AfChoice("supplied", check_frequencies(af_from, "the supplied allele frequencies"))
