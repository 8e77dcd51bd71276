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

Sharded arrays (format 3's ``alleles``: a shard file holds many inner chunks and an index at its
end) are also recorded piece by piece: the SHA-256 of each shard's index and a 64-bit digest
(the first 16 hex digits of the SHA-256) of each inner chunk. A partial read of a shard (the
index, or one inner chunk at the offsets the verified index gives) is then checked against its
own piece, so a 16-row gather hashes only the bytes it reads, never the whole shard; a whole
shard read is checked against the whole file's digest as before.

The cost is one SHA-256 of the compressed bytes a read touches (1.8 GB/s here; a window of
2008 haplotypes is a few kilobytes compressed): see the README for the measured figure.

Everything here works on any Zarr store (a local directory, or object storage through
:mod:`vcfstore.store.remote`): the record is read, and the files are listed and checked, through
the store itself. Messages name the store as ``where``: its directory or its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, LocalStore, WrapperStore

from vcfstore._fileio import atomic_write_bytes
from vcfstore.errors import StoreError

CHECKSUMS = "checksums.json"
# 2: shard files also record their index and inner chunks ("shards"); version 1 records are still read.
CHECKSUMS_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_UNRECORDED = ("zarr.json", CHECKSUMS)  # the root metadata (checked key by key) and the record itself
PIECE_HEX = 16  # hex digits of an inner chunk's digest (64 bits: damage, not an adversary, is the threat)
_NO_CHUNK = "-" * PIECE_HEX  # an index entry without a chunk (never written by vcfstore: see builder)
_EMPTY = 2**64 - 1  # the sharding index's offset and length of an absent chunk
_INDEX_CACHE = 256  # parsed shard indexes kept per open store (each n_inner x 16 bytes)
_CONCURRENT_READS = 16  # files read at once by a full check (a remote store's latency overlaps)

Where = Path | str  # how messages name a store: its directory, or its URL


def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ShardRecord:
    """A shard file's pieces: its index (size and SHA-256) and a 64-bit digest per inner chunk."""

    index_nbytes: int
    index_sha256: str
    chunks: str  # PIECE_HEX hex digits per inner chunk, in index order

    def chunk_digest(self, i: int) -> str:
        return self.chunks[i * PIECE_HEX : (i + 1) * PIECE_HEX]


@dataclass(frozen=True)
class ChecksumRecord:
    """What ``checksums.json`` holds: ``files`` {key: (size, sha256)} and ``shards`` {key: ShardRecord}."""

    files: dict[str, tuple[int, str]]
    shards: dict[str, ShardRecord] = field(default_factory=dict)


def sharded_index_nbytes(meta: dict[str, Any]) -> int | None:
    """Bytes of each shard's index for an array whose ``zarr.json`` is ``meta``, if vcfstore can read it piecewise.

    That is a ``sharding_indexed`` array with the index at the end, encoded as little-endian
    bytes plus CRC32C (zarr's default); any other layout is verified file by file only.
    """
    codecs = meta.get("codecs") or []
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0].get("configuration", {})
    index_codecs = [c.get("name") for c in conf.get("index_codecs", [])]
    if conf.get("index_location", "end") != "end" or index_codecs != ["bytes", "crc32c"]:
        return None
    shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
    inner = conf["chunk_shape"]
    n_inner = int(np.prod([s // c for s, c in zip(shard, inner, strict=True)]))
    return 16 * n_inner + 4


def parse_shard_index(index: bytes) -> np.ndarray:
    """(offset, nbytes) per inner chunk, uint64 [n_inner, 2], of a shard index read from the file's end."""
    return np.frombuffer(index[:-4], dtype="<u8").reshape(-1, 2)


def _shard_record(data: bytes, index_nbytes: int) -> ShardRecord:
    index = data[-index_nbytes:]
    digests = []
    for offset, nbytes in parse_shard_index(index).tolist():
        digests.append(_NO_CHUNK if offset == _EMPTY else _digest(data[offset : offset + nbytes])[:PIECE_HEX])
    return ShardRecord(index_nbytes, _digest(index), "".join(digests))


def record_checksums(path: Path) -> int:
    """Record size and SHA-256 of every file of the store at ``path`` (and shard pieces); returns the file count."""
    sharded = {}
    for meta_file in path.rglob("zarr.json"):
        nbytes = sharded_index_nbytes(json.loads(meta_file.read_bytes()))
        if nbytes is not None:
            sharded[meta_file.parent.relative_to(path).as_posix()] = nbytes
    files, shards = {}, {}
    for p in sorted(path.rglob("*")):
        key = p.relative_to(path).as_posix()
        if p.is_file() and key not in _UNRECORDED:
            data = p.read_bytes()
            files[key] = [len(data), _digest(data)]
            array = key.partition("/c/")[0]
            if array in sharded and is_chunk_key(key):
                r = _shard_record(data, sharded[array])
                shards[key] = [r.index_nbytes, r.index_sha256, r.chunks]
    record = {"version": CHECKSUMS_VERSION, "files": files, "shards": shards}
    atomic_write_bytes(path / CHECKSUMS, json.dumps(record).encode())
    return len(files)


def resolve(store: Store | Path, where: Where | None = None) -> tuple[Store, Where]:
    """A Zarr store and its name for messages: a directory becomes a read-only LocalStore."""
    if isinstance(store, Path):
        return LocalStore(str(store), read_only=True), store
    return store, str(store) if where is None else where


def key_location(where: Where, key: str) -> str:
    """Where one file of the store lives: ``dir/key`` or ``url/key``."""
    return str(where / key) if isinstance(where, Path) else f"{where.rstrip('/')}/{key}"


def load_checksums(store: Store | Path, where: Where | None = None) -> ChecksumRecord:
    """The store's :class:`ChecksumRecord`; a one-line StoreError if absent or damaged."""
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
        files, shards = raw["files"], raw.get("shards", {})
        if raw.get("version") not in _READABLE_VERSIONS or not isinstance(files, dict) or not isinstance(shards, dict):
            raise ValueError(f"version {raw.get('version')!r}")
        return ChecksumRecord(
            {str(k): (int(v[0]), str(v[1])) for k, v in files.items()},
            {str(k): ShardRecord(int(v[0]), str(v[1]), str(v[2])) for k, v in shards.items()},
        )
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
    store in messages. A whole file is checked against its SHA-256. A byte range of a recorded
    shard that is its index or one of its inner chunks is read alone and checked against that
    piece; any other range is served from the whole file, checked. :meth:`read_shard` and
    :meth:`read_inner_chunks` give vcfstore's own read path the same checks without Zarr's
    per-chunk machinery.
    """

    def __init__(self, store: Store, where: Where, record: ChecksumRecord) -> None:
        super().__init__(store)
        self._where, self._record = where, record
        self._indexes: OrderedDict[str, bytes] = OrderedDict()

    def _with_store(self, store: Store) -> VerifyingStore:
        return type(self)(store, self._where, self._record)

    @property
    def record(self) -> ChecksumRecord:
        """The store's checksum record: every file's size and digest, and the shards' pieces."""
        return self._record

    def describe(self, key: str) -> str:
        """The store, array and chunk of ``key``, for messages."""
        return describe_key(self._where, key)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        shard = self._record.shards.get(key)
        if shard is not None and byte_range is not None:
            size = self._record.files[key][0]
            start, stop = _bounds(byte_range, size)
            raw = await self._index(key, shard)
            if (start, stop) == (size - shard.index_nbytes, size):
                return prototype.buffer.from_bytes(raw)
            index = parse_shard_index(raw)
            hit = np.flatnonzero(index[:, 0] == start)
            if hit.size and int(index[hit[0], 1]) == stop - start:
                return (await self._chunks(key, shard, [int(hit[0])], index, prototype))[0]
        # Whole files are read and checked, then sliced: a range of a damaged file is no better.
        buf = await self._store.get(key, prototype, None)
        if key not in _UNRECORDED:
            check_bytes(self._where, key, None if buf is None else buf.to_bytes(), self._record.files)
        if buf is None or byte_range is None:
            return buf
        return buf[_slice(byte_range, len(buf))]

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    # --- shards, piece by piece -------------------------------------------------------------
    def _shard(self, key: str) -> ShardRecord:
        shard = self._record.shards.get(key)
        if shard is None:
            check_bytes(self._where, key, None, self._record.files)  # absent from the record: raises
            raise StoreError(f"{describe_key(self._where, key)} has no shard record; rebuild the store")
        return shard

    def _checked_index(self, key: str, shard: ShardRecord, data: bytes | None) -> bytes:
        """A shard's index as read (None: the file is absent), checked and kept in a small LRU."""
        where = describe_key(self._where, key)
        if data is None:
            raise StoreError(f"{where} is missing; rebuild the store")
        if len(data) != shard.index_nbytes or _digest(data) != shard.index_sha256:
            raise StoreError(f"{where}: its shard index is damaged (truncated, altered or swapped); rebuild the store")
        self._indexes[key] = data
        if len(self._indexes) > _INDEX_CACHE:
            with contextlib.suppress(KeyError):  # another thread emptied it first
                self._indexes.popitem(last=False)
        return data

    def _cached_index(self, key: str) -> bytes | None:
        # Lock-free: local gathers run on their callers' threads, so another thread may evict
        # the entry between the lookup and the move (a miss then, never an error).
        try:
            data = self._indexes[key]
            self._indexes.move_to_end(key)
        except KeyError:
            return None
        return data

    async def _index(self, key: str, shard: ShardRecord) -> bytes:
        """The shard's index, read and checked once."""
        cached = self._cached_index(key)
        if cached is not None:
            return cached
        buf = await self._store.get(key, default_buffer_prototype(), SuffixByteRequest(shard.index_nbytes))
        return self._checked_index(key, shard, None if buf is None else buf.to_bytes())

    def _piece(self, key: str, index: np.ndarray, i: int) -> tuple[int, int]:
        """(offset, nbytes) of inner chunk ``i`` as the checked index gives it; absent or out of range: an error."""
        if i >= len(index):
            raise StoreError(f"{self.describe(key)} has {len(index)} inner chunks, not {i + 1}")
        offset, nbytes = (int(x) for x in index[i])
        if offset == _EMPTY:
            raise StoreError(f"{self.describe(key)}, inner chunk {i} is absent from its shard; rebuild the store")
        return offset, nbytes

    def _check_piece(self, key: str, shard: ShardRecord, i: int, nbytes: int, data: bytes | None) -> bytes:
        if data is None or len(data) != nbytes:
            raise StoreError(f"{self.describe(key)}, inner chunk {i} is missing or truncated; rebuild the store")
        if _digest(data)[:PIECE_HEX] != shard.chunk_digest(i):
            raise StoreError(
                f"{self.describe(key)}, inner chunk {i} is damaged "
                "(its checksum differs from the one written; altered or swapped)"
            )
        return data

    async def _chunks(
        self, key: str, shard: ShardRecord, which: Sequence[int], index: np.ndarray, prototype: BufferPrototype
    ) -> list[Buffer]:
        async def one(i: int) -> Buffer:
            offset, nbytes = self._piece(key, index, i)
            buf = await self._store.get(key, prototype, RangeByteRequest(offset, offset + nbytes))
            self._check_piece(key, shard, i, nbytes, None if buf is None else buf.to_bytes())
            assert buf is not None
            return buf

        return list(await asyncio.gather(*(one(i) for i in which)))

    def read_shard(self, key: str) -> tuple[bytes, np.ndarray]:
        """A whole shard file, checked, and its parsed index."""
        shard = self._shard(key)
        buf = sync(self._store.get(key, default_buffer_prototype(), None))
        data = None if buf is None else buf.to_bytes()
        check_bytes(self._where, key, data, self._record.files)
        assert data is not None
        return data, parse_shard_index(data[-shard.index_nbytes :])

    def read_inner_chunks(self, wanted: dict[str, Sequence[int]]) -> dict[str, list[bytes]]:
        """The compressed bytes of some inner chunks of some shards, each checked.

        A local store is read with ``pread`` on the calling thread: a 16-row gather reads a few
        dozen small ranges, which Zarr's event loop would hand to its thread pool one by one (most
        of the gather's time). Any other store: all ranges in one event-loop round trip.
        """
        if isinstance(self._store, LocalStore):
            return {key: self._local_chunks(key, which) for key, which in wanted.items()}

        async def shard_chunks(key: str, which: Sequence[int]) -> list[bytes]:
            shard = self._shard(key)
            index = parse_shard_index(await self._index(key, shard))
            return [b.to_bytes() for b in await self._chunks(key, shard, which, index, default_buffer_prototype())]

        async def everything() -> list[list[bytes]]:
            return list(await asyncio.gather(*(shard_chunks(k, w) for k, w in wanted.items())))

        return dict(zip(wanted, sync(everything()), strict=True)) if wanted else {}

    def _local_chunks(self, key: str, which: Sequence[int]) -> list[bytes]:
        shard = self._shard(key)
        assert isinstance(self._store, LocalStore)
        try:
            fd = os.open(Path(self._store.root) / key, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # what Zarr's LocalStore calls absent
            raise StoreError(f"{self.describe(key)} is missing; rebuild the store") from None
        except OSError as e:
            raise StoreError(f"{self.describe(key)} cannot be read ({e.strerror})") from None
        try:
            raw = self._cached_index(key)
            if raw is None:
                tail = max(0, os.fstat(fd).st_size - shard.index_nbytes)
                raw = self._checked_index(key, shard, os.pread(fd, shard.index_nbytes, tail))
            index = parse_shard_index(raw)
            out = []
            for i in which:
                offset, nbytes = self._piece(key, index, i)
                out.append(self._check_piece(key, shard, i, nbytes, os.pread(fd, nbytes, offset)))
            return out
        except IsADirectoryError:  # a directory opens on Linux; reading it fails
            raise StoreError(f"{self.describe(key)} is missing; rebuild the store") from None
        except OSError as e:
            raise StoreError(f"{self.describe(key)} cannot be read ({e.strerror})") from None
        finally:
            os.close(fd)


def _bounds(r: ByteRequest, size: int) -> tuple[int, int]:
    s = _slice(r, size)
    return int(s.start), min(int(s.stop), size)


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
        recorded = load_checksums(store, where).files
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
