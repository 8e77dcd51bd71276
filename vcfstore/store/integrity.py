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

Everything here works on any Zarr store (a local directory, or object storage through
:mod:`vcfstore.store.remote`): the record is read, and the files are listed and checked, through
the store itself. Messages name the store as ``where``: its directory or its URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from vcfstore._fileio import atomic_write_bytes
from vcfstore.errors import StoreError

CHECKSUMS = "checksums.json"
CHECKSUMS_VERSION = 1
_UNRECORDED = ("zarr.json", CHECKSUMS)  # the root metadata (checked key by key) and the record itself
_CONCURRENT_READS = 16  # files read at once by a full check (a remote store's latency overlaps)

Where = Path | str  # how messages name a store: its directory, or its URL


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


def resolve(store: Store | Path, where: Where | None = None) -> tuple[Store, Where]:
    """A Zarr store and its name for messages: a directory becomes a read-only LocalStore."""
    if isinstance(store, Path):
        return LocalStore(str(store), read_only=True), store
    return store, str(store) if where is None else where


def key_location(where: Where, key: str) -> str:
    """Where one file of the store lives: ``dir/key`` or ``url/key``."""
    return str(where / key) if isinstance(where, Path) else f"{where.rstrip('/')}/{key}"


def load_checksums(store: Store | Path, where: Where | None = None) -> dict[str, tuple[int, str]]:
    """The recorded ``{key: (size, sha256)}`` of a store; a one-line StoreError if absent or damaged."""
    store, where = resolve(store, where)
    file = key_location(where, CHECKSUMS)
    try:
        buf = sync(store.get(CHECKSUMS, default_buffer_prototype()))
    except OSError as e:
        raise StoreError(f"{file} cannot be read ({e})") from None
    if buf is None:
        raise StoreError(f"{where}: the store has no {CHECKSUMS}, so its contents cannot be checked; rebuild it")
    try:
        raw = json.loads(buf.to_bytes())
        files = raw["files"]
        if raw.get("version") != CHECKSUMS_VERSION or not isinstance(files, dict):
            raise ValueError(f"version {raw.get('version')!r}")
        return {str(k): (int(v[0]), str(v[1])) for k, v in files.items()}
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise StoreError(f"{file} is damaged ({e}); rebuild the store") from None


def describe_key(store: Where, key: str) -> str:
    """``store``, array and chunk of a file key, for messages: ``alleles/c/0/3`` -> array alleles, chunk (0, 3)."""
    if "/c/" in key:
        array, _, chunk = key.partition("/c/")
        return f"{store}: array {array}, chunk ({', '.join(chunk.split('/'))})"
    return f"{store}: {key}"


def is_chunk_key(key: str) -> bool:
    return "/c/" in key or key.startswith("c/")


def check_bytes(store: Where, key: str, data: bytes | None, recorded: dict[str, tuple[int, str]]) -> None:
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


class VerifyingStore(WrapperStore[Store]):
    """A read-only Zarr store that checks every file it returns against the store's checksum record.

    It wraps any Zarr store (LocalStore, FsspecStore, ObjectStore, ...); ``where`` names the
    store in messages.
    """

    def __init__(self, store: Store, where: Where, recorded: dict[str, tuple[int, str]]) -> None:
        super().__init__(store)
        self._where, self._recorded = where, recorded

    def _with_store(self, store: Store) -> VerifyingStore:
        return type(self)(store, self._where, self._recorded)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        # Whole files are read and checked, then sliced: a range of a damaged file is no better.
        buf = await self._store.get(key, prototype, None)
        if key not in _UNRECORDED:
            check_bytes(self._where, key, None if buf is None else buf.to_bytes(), self._recorded)
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


def open_verified_group(store: Store | Path, where: Where | None = None) -> Any:
    """The store's Zarr group, read through :class:`VerifyingStore` (a directory or any Zarr store)."""
    import zarr

    store, where = resolve(store, where)
    return zarr.open_group(VerifyingStore(store, where, load_checksums(store, where)), mode="r")


def file_sizes(store: Store | Path) -> dict[str, int]:
    """``{key: bytes}`` of every file of a store, from its listing (no file is read)."""
    store, _ = resolve(store)
    return sync(_file_sizes(store))


async def _file_sizes(store: Store) -> dict[str, int]:
    while isinstance(store, WrapperStore):
        store = store._store
    if isinstance(store, FsspecStore):
        # One listing request per thousand objects, instead of one request per file.
        prefix = store.path.rstrip("/")
        found = await store.fs._find(prefix, detail=True)
        return {name[len(prefix) + 1 :]: int(info["size"]) for name, info in found.items()}
    return {key: await store.getsize(key) async for key in store.list()}


def verify_files(store: Store | Path, where: Where | None = None, *, sizes_only: bool = False) -> list[str]:
    """Check every recorded file of the store (and look for unrecorded files); one line per problem.

    ``sizes_only`` checks presence and sizes from the store's listing without reading the
    files (what ``vcfstore info`` does); the full check reads and hashes everything.
    """
    store, where = resolve(store, where)
    try:
        recorded = load_checksums(store, where)
    except StoreError as e:
        return [str(e)]
    listing = file_sizes(store)
    if sizes_only:
        problems = []
        for key in sorted(recorded):
            size, want = listing.get(key), recorded[key][0]
            if size != want:
                what = "is missing" if size is None else f"has {size} bytes, {want} were written"
                problems.append(f"{describe_key(where, key)} {what}")
    else:
        problems = sync(_check_all(store, where, recorded))
    for key in sorted(listing):
        if key not in recorded and key not in _UNRECORDED:
            problems.append(f"{describe_key(where, key)} is not in the store's checksum record (foreign file)")
    return problems


async def _check_all(store: Store, where: Where, recorded: dict[str, tuple[int, str]]) -> list[str]:
    """Read and check every recorded file, a few at a time; the problems in key order."""
    gate = asyncio.Semaphore(_CONCURRENT_READS)

    async def check(key: str) -> str | None:
        async with gate:
            buf = await store.get(key, default_buffer_prototype())
        try:
            check_bytes(where, key, None if buf is None else buf.to_bytes(), recorded)
        except StoreError as e:
            return str(e)
        return None

    found = await asyncio.gather(*(check(key) for key in sorted(recorded)))
    return [p for p in found if p is not None]
