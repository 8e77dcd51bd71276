"""File primitives shared by the store and the index set: digests, durable atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_PIECE = 1 << 22


def file_sha256(path: str | os.PathLike[str], *, limit: int | None = None) -> str:
    """SHA-256 of a file (or of its first ``limit`` bytes), read in 4 MiB pieces."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            piece = f.read(_PIECE if left is None else min(_PIECE, left))
            if not piece:
                break
            h.update(piece)
            if left is not None:
                left -= len(piece)
    return h.hexdigest()


def temp_path(path: Path) -> Path:
    """The temporary name a writer of ``path`` uses before moving it into place (unique per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Move a finished, fsynced temporary file over ``path``.

    ``os.replace`` never truncates the old file: a process that has it memory-mapped keeps its
    (now unlinked) inode, where writing in place would kill that reader with SIGBUS.
    """
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a part."""
    tmp = temp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    replace_durably(tmp, path)
