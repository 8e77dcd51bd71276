"""Streaming an ``IndexFlatCodes`` index to disk: the file layout, learnt from FAISS's serializer.

Indexes whose codes are stored flat (flat fp32, SQ fp16/8, PQ) are written by streaming the
codes of each encoded batch to the file, so building a window never holds the window's index in
RAM. The header's count fields are found by serializing empty, one- and two-vector clones, and
every file written from the template is read back and checked.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore.errors import IndexSetError
from vcfstore.index.runtime import faiss


class CodesTemplate:
    """The byte layout of an ``IndexFlatCodes`` file, learnt from FAISS's own serializer.

    A file for n vectors is a header whose count fields grow with n, then the codes, then a
    trailer that does not change. The count fields are ``ntotal`` (n) and the codes' length
    (n * code_size bytes, or n * d floats for flat indexes in current FAISS): the int64s that read
    0, s, 2s for 0, 1 and 2 vectors with s one of those steps. (Other steps that fit are the same
    bytes seen at a shifted offset.) Each file written from the template is read back and checked.
    """

    def __init__(self, index: Any, like: np.ndarray) -> None:
        cs = self.code_size = int(index.sa_code_size())
        # Random probes scaled like the data: their codes are distinct and do not occur by chance
        # in the header (real rows can be identical, or encode to runs of zero bytes).
        rng = np.random.default_rng(0)
        probe = (rng.standard_normal((2, like.shape[1])) * like.std() + like.mean()).astype(np.float32)
        h = []
        for n in (0, 1, 2):
            clone = faiss().clone_index(index)
            if n:
                clone.add(probe[:n])
            h.append(faiss().serialize_index(clone).tobytes())
        codes = index.sa_encode(probe[:2]).tobytes()
        self.at = h[1].find(codes[:cs])  # where the codes start
        if self.at < 0 or len(h[1]) != len(h[0]) + cs or h[2][self.at : self.at + 2 * cs] != codes:
            raise IndexSetError("this index kind does not store its codes flat; it cannot be streamed")
        self.header, self.trailer = h[0][: self.at], h[0][self.at :]
        steps = {1, cs, cs // 4 if cs % 4 == 0 else cs}
        self.fields: list[tuple[int, int]] = []
        for off in range(self.at - 7):
            v0, v1, v2 = (struct.unpack_from("<q", blob, off)[0] for blob in h)
            if v0 == 0 and v1 in steps and v2 == 2 * v1:
                self.fields.append((off, v1))
        if self.header_for(1) != h[1][: self.at] or self.header_for(2) != h[2][: self.at]:
            raise IndexSetError("cannot find the count fields of this index kind's header; it cannot be streamed")

    def header_for(self, n: int) -> bytes:
        buf = bytearray(self.header)
        for off, step in self.fields:
            struct.pack_into("<q", buf, off, n * step)
        return bytes(buf)


def check_streamed(path: Path, n: int, dim: int, last_code: np.ndarray, index: Any) -> None:
    """Read a streamed file back (mapped): its count, dimension and last vector must be right."""
    back = faiss().read_index(str(path), faiss().IO_FLAG_MMAP_IFC)
    ok = back.ntotal == n and back.d == dim
    if ok:
        ok = bool(np.array_equal(back.reconstruct(n - 1), index.sa_decode(last_code)[0]))
    del back
    if not ok:
        path.unlink(missing_ok=True)
        raise IndexSetError(f"internal error: the streamed index file {path.name} does not read back correctly")
