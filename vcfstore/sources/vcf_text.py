"""The fast path of the VCF reader: a text VCF's common records parsed a block at a time with NumPy.

htslib parses every field of a line into its binary form before cyvcf2 hands the GT codes back,
and cyvcf2 costs a few Python calls per record: together about as long as the rest of a build.
Most reference panels are text VCF (plain, gzip or BGZF) whose FORMAT is ``GT`` and whose calls
are diploid with one-digit alleles (``0|1``, ``1/0``, ``.|.``). Such a line ends in a run of
``4 * samples`` bytes at fixed offsets: this module inflates the file (zlib releases the GIL),
finds the line ends, checks every line's calls at once and decodes them straight into what the
cyvcf2 path decodes htslib's codes into (allele numbers, -1 for a missing allele, and the phase
of the second allele), which the input filter then takes alike. CHROM, POS, ID, REF and ALT are
split out of the text before the calls with C-level string operations.

Any other record (another FORMAT, another ploidy, a multi-digit allele, a line with more or fewer
columns, a NUL byte, CRLF line ends, an empty ALT, a position past 18 digits, a contig name the
VCF spec does not allow, a FILTER or INFO key that htslib cannot declare, text that is not UTF-8)
and any other file (a header that does not list the samples cyvcf2 read or declares GT other
than a String, BCF) is *unsupported*: the parser stops before that record, and the caller reads
the rest of the file with cyvcf2 from that record on, so every input gets the same sites and
the same errors as before. Tested against cyvcf2's own reading on generated files with each of
these cases. QUAL and the INFO values, which a build does not use, are not parsed: htslib does
not refuse a record for them either (it warns).
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore.errors import InputError

_PIECE = 64 << 10  # compressed bytes read at a time (zlib copies what a call leaves unread)
_TEXT = 256 << 10  # text bytes inflated at a time at most: small pieces leave the allocator's heap unfragmented
_FORMAT_GT = np.frombuffer(b"\tGT\t", dtype=np.uint8)
_NEWLINE, _TAB, _PIPE, _SLASH, _ZERO = (ord(c) for c in "\n\t|/0")
_VCF_START = b"##fileformat=VCF"
# A header line's KEY=value attributes, a value quoted or not
_ATTRIBUTE = re.compile(r'([A-Za-z_][0-9A-Za-z_.]*)=("(?:[^"\\]|\\.)*"|[^,>]*)')
# A contig name as the VCF spec (4.3, 1.4.7) allows: htslib takes a record on such a contig with or
# without a header line for it (it refuses some others, "chr,1"; those are left to cyvcf2).
_CONTIG_NAME = re.compile(r"[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*")
# A FILTER, or an INFO key (the text before "=" in each ";"-separated item), with a character that
# breaks the header line htslib writes for an undeclared one: htslib refuses the record.
_UNDECLARABLE = re.compile(r"[,<>]")
_UNDECLARABLE_KEY = re.compile(r"[;\t][^=;\t]*[,<>]")  # (each INFO after a tab: a class to scan for)
_POS_DIGITS = 18  # a position of more digits is left to cyvcf2 (which refuses one past 2^62)


def inflated(path: Path) -> Iterator[bytes]:
    """The file's bytes as text pieces of at most a few MB: plain, gzip or BGZF (many gzip members)."""
    with open(path, "rb") as f:
        data = f.read(max(_PIECE, 2))  # (the gzip magic number whole)
        if data[:2] != b"\x1f\x8b":
            while data:
                yield data
                data = f.read(_PIECE)
            return
        inflate, fed = zlib.decompressobj(wbits=31), False
        while data:
            try:
                text = inflate.decompress(data, _TEXT)
            except zlib.error as e:
                raise InputError(f"{path}: the file is truncated or corrupt ({e})") from None
            fed = True
            if text:
                yield text
            if inflate.eof:  # a member ends (BGZF has many): the next one starts in what is left
                data = inflate.unused_data or f.read(_PIECE)
                inflate, fed = zlib.decompressobj(wbits=31), False
            else:
                data = inflate.unconsumed_tail or f.read(_PIECE)
        if fed:  # the file ends inside a member
            raise InputError(f"{path}: the file is truncated or corrupt (the compressed stream ends early)")


def split_header(pieces: Iterator[bytes]) -> tuple[bytes, bytes] | None:
    """The header, up to and with the ``#CHROM`` line, and the text after it (the rest comes from ``pieces``).

    None when the text does not start as a VCF does or has no ``#CHROM`` line (BCF, for one).
    """
    text = bytearray()
    at = -1  # where the #CHROM line starts, once found
    for piece in pieces:
        seen = len(text)
        text += piece
        if len(text) >= len(_VCF_START) and not text.startswith(_VCF_START):
            return None
        if at < 0:
            at = text.find(b"\n#CHROM\t", max(0, seen - 8)) + 1 or -1
        stop = text.find(b"\n", max(at, seen)) if at >= 0 else -1
        if stop >= 0:
            return (bytes(text[: stop + 1]), bytes(text[stop + 1 :])) if text.startswith(_VCF_START) else None
    return None


def _readable_header(header: bytes, samples: list[str]) -> bool:
    """Whether the text parser may read the records after ``header``.

    The ``#CHROM`` line must name ``samples`` as cyvcf2 read them, and a FORMAT GT must not be
    declared other than a String (htslib then refuses every record; cyvcf2 says so).
    """
    lines = header.decode("utf-8", "replace").split("\n")[:-1]  # (htslib splits at line feeds only)
    for line in lines:
        if line.startswith("##FORMAT=<"):
            attributes: dict[str, str] = {}
            for key, value in _ATTRIBUTE.findall(line[len("##FORMAT=<") :]):
                attributes.setdefault(key, value)  # the first, as htslib reads them
            if attributes.get("ID") == "GT" and attributes.get("Type") != "String":
                return False
    return lines[-1].split("\t")[9:] == samples


class TextRecords:
    """The records of a text VCF, parsed into caller-given buffers until one is unsupported.

    Parameters
    ----------
    path : Path
        A text VCF (plain, gzip or BGZF).
    samples : list of str
        The samples as cyvcf2 read them: the ``#CHROM`` line must name exactly these.

    Attributes
    ----------
    supported : bool
        False once a record is left to cyvcf2 (from the first record when the file is not a
        text VCF with the expected samples): the caller reads on from there with cyvcf2.
    records : int
        Records handed out so far.
    """

    def __init__(self, path: Path, samples: list[str]) -> None:
        self.records = 0
        self._n_samples = len(samples)
        self._pieces = inflated(path)
        split = split_header(self._pieces)
        self.supported = _readable_header(split[0], samples) if split else False
        self._set_text(split[1] if split and self.supported else b"")

    def _set_text(self, text: bytes) -> None:
        self._text = text
        self._array = np.frombuffer(text, dtype=np.uint8)
        self._ends = np.flatnonzero(self._array == _NEWLINE)  # the complete lines' ends
        self._line = 0  # the next line: it starts after _ends[_line - 1]

    def _more_text(self) -> bool:
        """Join the text not parsed yet (part of a line) and the next piece; False at the end of the input."""
        start = int(self._ends[self._line - 1]) + 1 if self._line else 0
        rest = self._text[start:]
        piece = next(self._pieces, None)
        if piece is None:
            if rest:  # the last line, without its line end
                self._set_text(rest + b"\n")
                return True
            return False
        self._set_text(rest + piece)
        return True

    def fill(self, buffer: np.ndarray) -> tuple[list[str], list[int], list[str], list[str], list[list[str]], int]:
        """Parse up to ``len(buffer)`` records, their calls into ``buffer``'s bytes (see :func:`call_views`).

        Returns contigs, positions, IDs, REFs, ALT lists and the number of records: fewer at
        the end of the input or where :attr:`supported` turns False.
        """
        out: tuple[list, ...] = ([], [], [], [], [])
        gt, phased = call_views(buffer, len(buffer))
        row = 0
        while self.supported and row < len(buffer):
            if self._line == len(self._ends) and not self._more_text():
                break
            n = self._parse(gt[row:], phased[row:], out)
            row += n
            if self._line < len(self._ends) and n == 0:
                self.supported = False
        self.records += row
        return (*out, row)  # type: ignore[return-value]

    def _parse(self, gt: np.ndarray, phased: np.ndarray, out: tuple[list, ...]) -> int:
        """Parse complete lines, up to ``len(gt)``; the number parsed (it stops before an unsupported one)."""
        text, arr, ns = self._text, self._array, self._n_samples
        width = 4 * ns  # "a|b" and a tab (the last call: a line end) per sample
        ends = self._ends[self._line : self._line + len(gt)]
        first = int(self._ends[self._line - 1]) + 1 if self._line else 0
        starts = np.concatenate([[first], ends[:-1] + 1])
        calls = ends + 1 - width  # where each line's calls start
        # FORMAT is GT alone, right before the calls
        ok = calls - 4 > starts
        head_end = np.where(ok, calls - 4, starts)
        for k in range(4):
            ok &= arr.take(head_end + k, mode="clip") == _FORMAT_GT[k]  # (clipped: a short last line)
        # CHROM to INFO: exactly eight columns, and no NUL (htslib ends a line there: a NUL-filled
        # stretch of a damaged file could join one record's columns to another's calls)
        heads = list(map(text.__getitem__, map(slice, starts.tolist(), head_end.tolist())))
        ok &= np.fromiter(map(bytes.count, heads, itertools.repeat(b"\t")), dtype=np.int64, count=len(ends)) == 7
        ok &= ~np.fromiter(map(bytes.__contains__, heads, itertools.repeat(b"\0")), dtype=bool, count=len(ends))
        n = len(ends) if ok.all() else int(np.argmin(ok))
        if n == 0:
            return 0
        joined = b"".join(map(text.__getitem__, map(slice, calls[:n].tolist(), (calls[:n] + width).tolist())))
        block = np.frombuffer(joined, dtype=np.uint8).reshape(n, ns, 4)
        n = _decode_calls(block, gt[:n], phased[:n])
        if n == 0:
            return 0
        try:
            fields = b"\t".join(heads[:n]).decode("utf-8").split("\t")
        except UnicodeDecodeError:  # the records before the first that is not UTF-8 (cyvcf2 reads that one)
            n = next(i for i, head in enumerate(heads[:n]) if not _is_utf8(head))
            if n == 0:
                return 0
            fields = b"\t".join(heads[:n]).decode("utf-8").split("\t")
        contigs, positions, ids, refs, alt_text, _, filters, infos = (fields[k::8] for k in range(8))
        alts = list(map(str.split, alt_text, itertools.repeat(",")))
        columns = (contigs, positions, ids, refs, alts, filters, infos)
        if not _plain_columns(*columns):  # rarely: the records before the first that is not
            n = next(i for i in range(n) if not _plain_columns(*(c[i : i + 1] for c in columns)))
            contigs, positions, ids, refs, alts = contigs[:n], positions[:n], ids[:n], refs[:n], alts[:n]
        if ["."] in alts:  # no ALT allele: an empty list, as cyvcf2 gives
            alts = [[] if a == ["."] else a for a in alts]
        values: tuple[Iterable[Any], ...] = (contigs, map(int, positions), ids, refs, alts)
        for column, new in zip(out, values, strict=True):
            column += new
        self._line += n
        return n


def _plain_columns(*columns: list[Any]) -> bool:
    """Whether records' columns read as cyvcf2 reads them.

    No empty column or ALT, positions of at most 18 digits, contig names as the VCF spec allows,
    and no FILTER or INFO key with a character that htslib cannot declare (it refuses the record).
    ``columns``: CHROM, POS, ID, REF, the ALT lists, FILTER and INFO of the records.
    """
    contigs, positions, ids, refs, alts, filters, infos = columns
    digits = "".join(positions)
    info = "\t" + "\t".join(infos)
    if (
        any("" in column for column in (contigs, positions, ids, refs))
        or not (digits.isdecimal() and digits.isascii())
        or max(map(len, positions), default=0) > _POS_DIGITS
        or any(map(list.__contains__, alts, itertools.repeat("")))  # htslib reads an empty ALT as "."
        or _UNDECLARABLE.search("\t".join(set(filters)))
        or (any(c in info for c in ",<>") and _UNDECLARABLE_KEY.search(info))
    ):
        return False
    return all(_CONTIG_NAME.fullmatch(c) for c in set(contigs))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def call_views(buffer: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` records' calls in the bytes of ``buffer`` (int32 [rows, samples, 2]).

    Alleles int8 [n, samples, 2], decoded as the input filter takes them (-1 missing), and the
    second allele's phase, bool [n, samples]: 3 of the 8 bytes a call of the buffer has. The
    text parser writes them there and the caller reads them from there, so the parser needs no
    buffers of its own (see ``RAW_BUFFER_BYTES`` in :mod:`vcfstore.sources.vcf`).
    """
    rows, n_samples = buffer.shape[:2]
    flat = buffer.reshape(-1).view(np.uint8)
    gt = flat[: 2 * rows * n_samples].view(np.int8).reshape(rows, n_samples, 2)
    phased = flat[2 * rows * n_samples : 3 * rows * n_samples].view(bool).reshape(rows, n_samples)
    return gt[:n], phased[:n]


def _decode_calls(block: np.ndarray, gt: np.ndarray, phased: np.ndarray) -> int:
    """Decode text calls ``block`` uint8 [n, samples, 4] into ``gt`` and ``phased``.

    Returns the number of rows decoded: those before the first that is not calls.
    """
    np.subtract(block[:, :, 0:3:2], _ZERO, out=gt.view(np.uint8))  # '.' wraps to -2, '/' to -1
    np.equal(block[:, :, 1], _PIPE, out=phased)
    last = block[:, :, 3]
    lowest, highest = int(gt.min()), int(gt.max())
    good = (
        highest <= 9
        and lowest >= -2
        and (lowest >= 0 or not (gt == -1).any())
        and (phased.all() or bool(((block[:, :, 1] == _SLASH) | phased).all()))
        and bool((last[:, :-1] == _TAB).all())  # (the last call's is the line end found)
    )
    if not good:  # the rows before the first bad one
        rows = (gt <= 9).all(axis=(1, 2)) & ((gt == -2) | (gt >= 0)).all(axis=(1, 2))
        rows &= ((block[:, :, 1] == _SLASH) | phased).all(axis=1)
        rows &= (last[:, :-1] == _TAB).all(axis=1)
        n = int(np.argmin(rows))
        gt, lowest = gt[:n], int(gt[:n].min()) if n else 0
    else:
        n = len(gt)
    if lowest < 0:
        gt[gt == -2] = -1  # missing, as htslib's codes decode
    return n
