"""File primitives shared by the store and the index set: digests, durable atomic writes."""

from __future__ import annotations

import hashlib
import os
import re
import socket
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
    """The temporary name a writer of ``path`` uses before moving it into place (unique per process).

    The name carries the host and pid, so a later writer can tell a dead process's leftover
    (:func:`remove_stale_temps`) from a live writer's file.
    """
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.tmp")


_TEMP = re.compile(r"^\..+\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")


def _host() -> str:
    return socket.gethostname().split(".")[0].replace(".", "_") or "host"


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temporary files that dead writers on this host left in ``directory``; returns them.

    A killed or disk-full build leaves its ``.NAME.HOST.PID.tmp`` files (up to the size of a
    whole index); files of live processes and of other hosts are left alone.
    """
    from vcfstore._lock import process_alive

    removed = []
    for p in directory.iterdir() if directory.is_dir() else ():
        m = _TEMP.match(p.name)
        if m and m["host"] == _host() and not process_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names object storage (``s3://...``, ``gs://...``) rather than a local path."""
    text = os.fspath(location)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")
