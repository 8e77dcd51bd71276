"""Phased sites from a VCF or BCF file (plain, gzip or BGZF), read with cyvcf2/htslib.

A BGZF file (``.vcf.gz``, ``.bgz``, compressed BCF) cut exactly at a block boundary reads as a
valid, shorter file, so its end-of-file marker is checked before anything is read. A plain
gzip file cut anywhere fails in htslib's inflate (its stream lacks the end and the CRC trailer),
which the reader reports as a truncated file.

Reading overlaps the rest of the build: a reader thread fills a block buffer while the caller's
thread filters and stores the previous block; one block waits between them. A whole-file read
that does not need INFO/AF (every build but ``--af-from info``) goes through the text parser of
:mod:`vcfstore.sources.vcf_text`, which reads the common records of a text VCF (FORMAT ``GT``,
diploid, one-digit alleles) a block at a time with NumPy and leaves the first other record, and
all after it, to cyvcf2. With cyvcf2 the reader thread iterates the records (htslib parses each
line without the GIL, and decompresses BGZF in a thread of its own) and copies each record's raw
GT codes into the buffer, and the caller's thread decodes them (whole-block NumPy operations).
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore._fileio import file_sha256
from vcfstore.errors import InputError
from vcfstore.sources.base import SiteBlock
from vcfstore.sources.policy import InputPolicy, RecordFilter
from vcfstore.sources.vcf_text import TextRecords, call_views

# The 28-byte empty block every BGZF writer (htslib, bgzip, pysam) ends a file with (SAM spec 4.1.2).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
# htslib's raw GT codes: (allele + 1) << 1 | phased, 0 or 1 for a missing allele, and these two.
_GT_VECTOR_END = -(2**31) + 1  # padding of a call with fewer alleles than the record's most
_GT_FIELD_MISSING = -(2**31)  # the whole field missing
_END = object()  # the reader's last item
# Bytes of raw GT codes in one block at most (fewer records a block in a wide panel): the block's
# temporaries then come from the allocator's heap again and again, instead of new pages each
# time, whose first touch costs more than the decoding (about 1.4 ms a megabyte here).
RAW_BUFFER_BYTES = 16 << 20


class VcfSource:
    """Phased sites from a VCF or BCF file (plain, gzip or BGZF), read with cyvcf2/htslib.

    Parameters
    ----------
    path : path-like
        The VCF/BCF file.
    region : str, optional
        ``chr:start-end`` (needs a .tbi/.csi index beside the file).
    policy : InputPolicy
        What to do with records that are not phased, complete, biallelic SNVs.
    af_field : str
        INFO field read when the allele frequency comes from the input (``--af-from info``).
    min_pos : int, optional
        Leave out records whose POS is before this position. A region query also returns
        records that start before the region and overlap it (deletions); a partitioned build
        (:mod:`vcfstore.store.partitioned`) uses this so that every record belongs to the one
        partition holding its POS.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        region: str | None = None,
        policy: InputPolicy | None = None,
        af_field: str = "AF",
        min_pos: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.region = region
        self.min_pos = min_pos
        self.policy = policy or InputPolicy()
        self.af_field = af_field
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        check_bgzf_end(self.path)
        vcf = self._open()
        self.samples = list(vcf.samples)
        vcf.close()
        if not self.samples:
            raise InputError(f"{self.path}: the file has no samples (no genotype columns)")
        self.filter = RecordFilter(self.policy)

    def _open(self, threads: int | None = None) -> Any:
        from cyvcf2 import VCF

        try:
            return VCF(str(self.path), lazy=True, threads=threads)
        except Exception as e:  # noqa: BLE001 - cyvcf2 raises bare Exception for a bad header
            raise InputError(f"{self.path}: not a readable VCF/BCF file ({e})") from None

    def describe(self) -> dict[str, object]:
        """Name, size and checksum of the input, recorded in the store's attributes."""
        return {
            "kind": "vcf",
            "name": self.path.name,
            "size": self.path.stat().st_size,
            "sha256": file_sha256(self.path),
            "region": self.region,
        }

    def expected_records(self) -> int | None:
        """The number of records, when an index says so without a pass over the file."""
        # Without an index htslib prints "could not retrieve index" on stderr before giving up.
        if self.region is not None or not any(Path(f"{self.path}{ext}").is_file() for ext in (".tbi", ".csi")):
            return None
        try:
            vcf = self._open()
            n = vcf.num_records
            vcf.close()
            return int(n)
        except Exception:  # noqa: BLE001 - no index, or a format without counts: no total
            return None

    def blocks(self, block_sites: int = 1024) -> Iterator[SiteBlock]:
        """Yield blocks of at most about ``block_sites`` records' sites, in file order."""
        handoff: queue.Queue[Any] = queue.Queue()
        # Two buffers of raw GT codes, made here and reused: the reader fills one while this thread
        # decodes the other (allocating them in the reader would leave their pages cached in its own
        # malloc arena). Pages are only touched as records are copied in.
        buffers: queue.Queue[np.ndarray] = queue.Queue()
        rows = max(1, min(block_sites, RAW_BUFFER_BYTES // (8 * len(self.samples))))
        for _ in range(2):
            buffers.put(np.empty((rows, len(self.samples), 2), dtype=np.int32))
        stop = threading.Event()
        reader = threading.Thread(
            target=self._read, args=(handoff, buffers, stop), name="vcfstore-vcf-reader", daemon=True
        )
        reader.start()
        try:
            while (item := handoff.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                contigs, positions, ids, refs, alts, afs, raw, n, decoded = item
                if decoded:  # the text parser's calls, in the buffer's bytes
                    gt, phased = call_views(raw, n)
                    block = self.filter(contigs, positions, ids, refs, alts, gt, phased, afs)
                    del gt, phased
                else:  # decodes raw in place; the block holds none of it
                    block = self._filter(contigs, positions, ids, refs, alts, afs, raw[:n])
                buffers.put(raw)
                del item, raw
                yield block
                del block
        finally:  # also when the caller stops early: release the reader, which closes the file
            stop.set()
            buffers.put(np.empty((0, 0, 2), dtype=np.int32))
            reader.join()
        if self.filter.counts["records"] == 0:
            raise InputError(
                f"{self.path}: the file has no variant records" + (f" in {self.region}" if self.region else "")
            )

    def _read(self, handoff: queue.Queue[Any], buffers: queue.Queue[np.ndarray], stop: threading.Event) -> None:
        """The reader thread: fills buffers from ``buffers`` with raw GT codes and hands them over.

        Each item on ``handoff`` is (contigs, positions, ids, refs, alts, INFO/AF values or None,
        the buffer, its record count, whether the buffer holds decoded calls); then ``_END``, or
        the error that stopped the reader. A whole-file read without INFO/AF goes through the text
        parser (:mod:`vcfstore.sources.vcf_text`, which writes decoded calls) as far as it can,
        and cyvcf2 (htslib's raw codes) reads the rest.
        """
        try:
            done = 0
            if self.region is None and self.min_pos is None and not self.filter.info_af:
                text = TextRecords(self.path, self.samples)
                while text.supported:
                    raw = buffers.get()  # the caller gives one back when it stops, too
                    if stop.is_set():
                        break
                    *fields, n = text.fill(raw)
                    if n:
                        handoff.put((*fields, None, raw, n, True))
                    else:
                        buffers.put(raw)
                    if n < len(raw):  # the end of the input, or a record left to cyvcf2
                        break
                done = text.records
                if text.supported or stop.is_set():
                    handoff.put(_END)
                    return
            self._read_records(handoff, buffers, stop, done)
            handoff.put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            handoff.put(e)

    def _read_records(
        self, handoff: queue.Queue[Any], buffers: queue.Queue[np.ndarray], stop: threading.Event, skip: int
    ) -> None:
        """Read with cyvcf2, after the first ``skip`` records (those the text parser read)."""
        vcf = self._open(threads=1)  # one more thread decompresses BGZF ahead of the parser
        af_field, min_pos = self.af_field, self.min_pos
        read_af = self.filter.info_af
        try:
            records = iter(vcf(self.region) if self.region else vcf)
            for _ in itertools.takewhile(lambda _: not stop.is_set(), itertools.islice(records, skip)):
                pass
            while not stop.is_set():
                raw = buffers.get()  # the caller gives one back when it stops, too
                if stop.is_set():
                    break
                fields: tuple[list[Any], ...] = ([], [], [], [], [], [])
                chrom, pos_, id_, ref, alt, af = (f.append for f in fields)
                n = 0
                for rec in records:
                    if stop.is_set():  # the caller has stopped: no need to parse the rest of a block
                        break
                    pos = rec.start + 1  # (cyvcf2's POS wraps past 2^31)
                    if min_pos is not None and pos < min_pos:
                        continue
                    gt = rec.format("GT", int)  # htslib's codes as they are: one copy, no per-call loop
                    if gt is None:
                        raise InputError(f"record {rec.CHROM}:{pos} has no GT field")
                    if gt.shape != raw.shape[1:]:
                        raise InputError(
                            f"record {rec.CHROM}:{pos} is not diploid for every sample (mixed or other ploidy)"
                        )
                    raw[n] = gt
                    chrom(rec.CHROM)
                    pos_(pos)
                    id_(rec.ID or ".")
                    ref(rec.REF)
                    alt(rec.ALT)
                    if read_af:
                        af(rec.INFO.get(af_field))
                    n += 1
                    if n == len(raw):
                        break
                if n:
                    handoff.put((*fields[:5], fields[5] if read_af else None, raw, n, False))
                if n < len(raw) or stop.is_set():
                    break
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - htslib reports truncation and corruption as bare Exception
            raise InputError(f"{self.path}: the file is truncated or corrupt ({e})") from None
        finally:
            vcf.close()

    def _filter(
        self,
        contigs: list[str],
        positions: list[int],
        ids: list[str],
        refs: list[str],
        alts: list[list[str]],
        afs: list[Any] | None,
        raw: np.ndarray,
    ) -> SiteBlock:
        """Decode a block's raw GT codes in place into allele codes (-1 missing, -2 padding) and filter it."""
        # The phase bit is bit 0 of the second allele's code: masked in its lowest byte (no int32 temporary).
        low = raw.view(np.uint8)[:, :, 4 if sys.byteorder == "little" else 7]
        phased = np.bitwise_and(low, 1).view(bool)
        negative = raw.min() < 0
        if negative:
            field_missing = raw == _GT_FIELD_MISSING
            vector_end = raw == _GT_VECTOR_END
        gt = np.right_shift(raw, 1, out=raw)
        gt -= 1
        if negative:
            gt[field_missing] = -1
            gt[vector_end] = -2
        return self.filter(contigs, positions, ids, refs, alts, gt, phased, afs)


def check_bgzf_end(path: Path) -> None:
    """Refuse a BGZF file without the end-of-file marker (truncated, or still being written).

    Files that are not BGZF (plain text, plain gzip, uncompressed BCF) pass unchecked.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(18)
            # gzip magic, deflate, FEXTRA set, and the "BC" subfield of a BGZF block header
            if head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC":
                return
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - len(BGZF_EOF), 0))
            tail = f.read()
    except OSError as e:
        raise InputError(f"{path}: cannot read the file ({e.strerror})") from None
    if tail != BGZF_EOF:
        raise InputError(
            f"{path}: the file is truncated or corrupt: it is BGZF-compressed but lacks the BGZF end-of-file "
            "marker (a copy cut short, or a file still being written)"
        )
