"""Nothing damaged reads as data: every file of a store is checksummed, and every read is checked.

Zarr returns the fill value for a missing chunk, and Zstd can decode a damaged chunk to other
bytes without complaint, so a store whose files were deleted, truncated, altered or swapped
would read back as wrong genotypes. At the end of a build the builder records the size and
SHA-256 of every file of the store except the root ``zarr.json`` (whose attributes are checked
key by key at open) in ``checksums.json``. The reader opens Zarr through
:class:`VerifyingStore`, which checks each file against that record as it is read: a file that
is recorded but missing, of another size or content (a swapped chunk has the right size but
another digest), or a chunk that is not recorded, raises a :class:`StoreError` naming the
store, the array and the chunk. Every chunk is written at build time, empty ones included
(``write_empty_chunks``), so a chunk the record lacks is never legitimately absent.

The cost is one SHA-256 of the compressed bytes a read touches (1.8 GB/s here; a window of
2008 haplotypes is a few kilobytes compressed): see the README for the measured figure.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore

from vcfstore._fileio import atomic_write_bytes
from vcfstore.errors import StoreError

CHECKSUMS = "checksums.json"
CHECKSUMS_VERSION = 1
_UNRECORDED = ("zarr.json", CHECKSUMS)  # the root metadata (checked key by key) and the record itself


def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def record_checksums(path: Path) -> int:
    """Record size and SHA-256 of every file of the store at ``path``; returns the file count."""
    files = {}
    for p in sorted(path.rglob("*")):
        key = p.relative_to(path).as_posix()
        if p.is_file() and key not in _UNRECORDED:
            data = p.read_bytes()
            files[key] = [len(data), _digest(data)]
    atomic_write_bytes(path / CHECKSUMS, json.dumps({"version": CHECKSUMS_VERSION, "files": files}).encode())
    return len(files)


def load_checksums(path: Path) -> dict[str, tuple[int, str]]:
    """The recorded ``{key: (size, sha256)}`` of a store; a one-line StoreError if absent or damaged."""
    file = path / CHECKSUMS
    try:
        raw = json.loads(file.read_text())
        files = raw["files"]
        if raw.get("version") != CHECKSUMS_VERSION or not isinstance(files, dict):
            raise ValueError(f"version {raw.get('version')!r}")
        return {str(k): (int(v[0]), str(v[1])) for k, v in files.items()}
    except FileNotFoundError:
        raise StoreError(
            f"{path}: the store has no {CHECKSUMS}, so its contents cannot be checked; rebuild it"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise StoreError(f"{file} is damaged ({e}); rebuild the store") from None


def describe_key(store: Path, key: str) -> str:
    """``store``, array and chunk of a file key, for messages: ``alleles/c/0/3`` -> array alleles, chunk (0, 3)."""
    if "/c/" in key:
        array, _, chunk = key.partition("/c/")
        return f"{store}: array {array}, chunk ({', '.join(chunk.split('/'))})"
    return f"{store}: {key}"


def is_chunk_key(key: str) -> bool:
    return "/c/" in key or key.startswith("c/")


def check_bytes(store: Path, key: str, data: bytes | None, recorded: dict[str, tuple[int, str]]) -> None:
    """Raise a StoreError unless ``data`` (None: the file is absent) is exactly what the build wrote."""
    want = recorded.get(key)
    where = describe_key(store, key)
    if want is None:
        if data is not None or is_chunk_key(key):
            raise StoreError(f"{where} is not in the store's checksum record (missing or foreign); rebuild the store")
        return
    if data is None:
        raise StoreError(f"{where} is missing; rebuild the store")
    if len(data) != want[0]:
        raise StoreError(f"{where} has {len(data)} bytes, {want[0]} were written (truncated or replaced)")
    if _digest(data) != want[1]:
        raise StoreError(f"{where} is damaged (its checksum differs from the one written; altered or swapped)")


class VerifyingStore(WrapperStore[LocalStore]):
    """A read-only Zarr store that checks every file it returns against the store's checksum record."""

    def __init__(self, store: LocalStore, root: Path, recorded: dict[str, tuple[int, str]]) -> None:
        super().__init__(store)
        self._root, self._recorded = root, recorded

    def _with_store(self, store: LocalStore) -> VerifyingStore:
        return type(self)(store, self._root, self._recorded)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        # Whole files are read and checked, then sliced: a range of a damaged file is no better.
        buf = await self._store.get(key, prototype, None)
        if key not in _UNRECORDED:
            check_bytes(self._root, key, None if buf is None else buf.to_bytes(), self._recorded)
        if buf is None or byte_range is None:
            return buf
        return buf[_slice(byte_range, len(buf))]

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]


def _slice(r: ByteRequest, size: int) -> slice:
    if isinstance(r, RangeByteRequest):
        return slice(r.start, r.end)
    if isinstance(r, OffsetByteRequest):
        return slice(r.offset, size)
    if isinstance(r, SuffixByteRequest):
        return slice(max(0, size - r.suffix), size)
    raise StoreError(f"unsupported byte range {r!r}")


def open_verified_group(path: Path) -> Any:
    """The store's Zarr group, read through :class:`VerifyingStore`."""
    import zarr

    local = LocalStore(str(path), read_only=True)
    return zarr.open_group(VerifyingStore(local, path, load_checksums(path)), mode="r")


def verify_files(path: Path, *, sizes_only: bool = False) -> list[str]:
    """Check every recorded file of the store (and look for unrecorded chunks); one line per problem.

    ``sizes_only`` checks presence and sizes from the directory listing without reading the
    files (what ``vcfstore info`` does); the full check reads and hashes everything.
    """
    try:
        recorded = load_checksums(path)
    except StoreError as e:
        return [str(e)]
    problems = []
    for key in sorted(recorded):
        p = path / key
        try:
            if sizes_only:
                size = p.stat().st_size if p.is_file() else None
                if size != recorded[key][0]:
                    what = "is missing" if size is None else f"has {size} bytes, {recorded[key][0]} were written"
                    raise StoreError(f"{describe_key(path, key)} {what}")
            else:
                check_bytes(path, key, p.read_bytes() if p.is_file() else None, recorded)
        except StoreError as e:
            problems.append(str(e))
    for p in sorted(path.rglob("*")):
        key = p.relative_to(path).as_posix()
        if p.is_file() and key not in recorded and key not in _UNRECORDED:
            problems.append(f"{describe_key(path, key)} is not in the store's checksum record (foreign file)")
    return problems
