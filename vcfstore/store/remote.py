"""Panel stores on object storage (S3 and S3-compatible servers), through Zarr's own store layer.

Reading: a store URL (``s3://bucket/panel.vcfstore``) opens as Zarr's
:class:`~zarr.storage.FsspecStore` over fsspec's S3 filesystem (``s3fs``), wrapped in
:class:`RemoteReads`: every file read (and every byte range: a format 3 shard's index and inner
chunks are read piece by piece) is kept in a per-process LRU cache of compressed chunks, held
under the :class:`MemoryBudget` when one is given (and under a byte ceiling in any case), and
every failure of the client becomes one :class:`StoreError` naming the store and what to
check. The integrity layer (:class:`~vcfstore.store.integrity.VerifyingStore`) sits on top, so
object storage is checked against ``checksums.json`` exactly like a local directory.

Why fsspec and not obstore, measured (``benchmarks/object_storage.py``, a window of 2008
haplotypes x 1028 sites from a local S3 server): plain Zarr reads it in 8.8 ms (median) over
obstore and 19.8 ms over fsspec, but obstore's Tokio runtime is process-global and does not
survive ``fork``: a forked worker's first read hangs once the parent has read (fork is Linux's
default DataLoader start method), where fsspec resets its event loop and instance cache after
a fork. vcfstore opens the filesystem lazily in each process, so fork, spawn and forkserver
workers all read; and with the chunk cache the remote latency is paid once per chunk (a warm
window read takes 2.1 ms, the local store 2.4 ms).

Failures are bounded: unless ``storage_options`` say otherwise, connections time out after
5 s, reads after 20 s, and botocore makes 3 attempts in all ("standard" retry mode, jittered
backoff), so a stopped server is an error after about 3 s, never a hang.

Writing (:class:`RemoteBuild`): :func:`~vcfstore.store.builder.build_store` builds into a local
staging directory (resumable there, as any build), then uploads the finished store through the
same store layer: every file but the root ``zarr.json``, then ``zarr.json`` last, so a store whose
upload was interrupted is never opened as a valid one; then the uploaded sizes are checked
against ``checksums.json``. Every later read is checked against the SHA-256 record anyway.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import FsspecStore, WrapperStore

from vcfstore._fileio import is_url  # noqa: F401 - defined there (no Zarr), named here too
from vcfstore.errors import MemoryBudgetExceeded, StoreError
from vcfstore.store.integrity import CHECKSUMS, verify_files
from vcfstore.store.reader import DEFAULT_CHUNK_CACHE  # noqa: F401 - defined there (no Zarr), named here too

if TYPE_CHECKING:  # the memory layer sits above the store; its classes load when a remote store opens
    from vcfstore.memory.budget import MemoryBudget
    from vcfstore.memory.lru import LruCache
    from vcfstore.store.reader import PanelStore

# Bounded failures: botocore's standard retry mode (3 attempts in all, jittered backoff) and
# timeouts; s3fs's own retry loop on top would multiply the attempts, so it makes one.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {
        "connect_timeout": 5,
        "read_timeout": 20,
        "retries": {"total_max_attempts": 3, "mode": "standard"},
    },
}
S3FS_RETRIES = 1
_UPLOAD_MARKER = ".vcfstore-upload"  # present while an upload runs: the prefix holds an unfinished store
_CONCURRENT_UPLOADS = 16


def with_defaults(storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` with vcfstore's timeouts and retries filled in where they are not given."""
    opts = copy.deepcopy(storage_options or {})
    config = opts.setdefault("config_kwargs", {})
    for key, value in S3_DEFAULTS["config_kwargs"].items():
        config.setdefault(key, copy.deepcopy(value))
    return opts


def object_store(url: str, storage_options: dict[str, Any] | None, *, read_only: bool = True) -> FsspecStore:
    """Zarr's FsspecStore for ``url``, with bounded timeouts and retries (no request is made yet)."""
    try:
        store = FsspecStore.from_url(url, storage_options=with_defaults(storage_options), read_only=read_only)
    except ImportError as e:
        raise StoreError(f"{url}: reading object storage needs s3fs ({e}); pip install 'vcfstore[s3]'") from None
    except (ValueError, TypeError) as e:
        raise StoreError(f"{url}: cannot open this URL or its storage_options ({e})") from None
    if hasattr(store.fs, "retries"):
        store.fs.retries = S3FS_RETRIES
    return store


def remote_error(where: str, what: str, error: BaseException) -> StoreError:
    """One line for a failure of the object storage client: the store, the action, the cause, what to check."""
    detail = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, PermissionError):
        hint = (
            "access denied; check the credentials (storage_options 'key' and 'secret', or the AWS_* environment) "
            "and the bucket's permissions"
        )
    elif _is_connection_error(error):
        hint = "the server cannot be reached (retries exhausted); check endpoint_url and that the server runs"
    else:
        hint = type(error).__name__
    return StoreError(f"{where}: {what} failed: {hint} ({detail})")


def _is_connection_error(error: BaseException) -> bool:
    kinds: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    try:
        from botocore import exceptions as boto

        kinds += (boto.ConnectionError, boto.HTTPClientError)
    except ImportError:  # another fsspec backend: only Python's own connection errors are known
        pass
    return isinstance(error, kinds)


class RemoteReads(WrapperStore[Store]):
    """Reads of an object store: whole files cached in RAM (LRU), failures as one-line StoreErrors.

    Parameters
    ----------
    store : zarr Store
        The object store (an FsspecStore).
    where : str
        The store's URL, for messages.
    cache_bytes : int
        Ceiling of the cache (0: no cache). Files are cached as read (compressed chunks).
    budget : MemoryBudget, optional
        Admits each cached file as anonymous memory, and may evict from the cache to admit
        others; a file the budget cannot admit is returned uncached.
    """

    def __init__(self, store: Store, where: str, cache_bytes: int = 0, budget: MemoryBudget | None = None) -> None:
        from vcfstore.memory.lru import LruCache

        super().__init__(store)
        self._where, self._cache_bytes, self._budget = where, cache_bytes, budget
        self.cache: LruCache[bytes] | None = LruCache("object storage chunks", budget) if cache_bytes > 0 else None

    def _with_store(self, store: Store) -> RemoteReads:
        return type(self)(store, self._where, self._cache_bytes, self._budget)

    def __str__(self) -> str:
        return self._where

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        # Byte ranges are cached too: a format 3 shard is read piece by piece (its index, then the
        # inner chunks a gather needs), and those pieces are what a training loop reads again.
        entry = _cache_key(key, byte_range)
        if entry is not None and self.cache is not None:
            hit = self.cache.get(entry)
            if hit is not None:
                return prototype.buffer.from_bytes(hit)
        try:
            buf = await self._store.get(key, prototype, byte_range)
        except Exception as e:  # noqa: BLE001 - any failure of the client becomes one StoreError naming the store
            raise remote_error(self._where, f"reading {key}", e) from None
        if buf is not None and entry is not None and self.cache is not None:
            self._remember(entry, buf.to_bytes())
        return buf

    def _remember(self, key: tuple[str, int, int], data: bytes) -> None:
        assert self.cache is not None
        if len(data) > self._cache_bytes:
            return
        try:
            self.cache.admit(anon=len(data), what=f"caching {key[0]} of {self._where}")
        except MemoryBudgetExceeded:
            return  # the read itself succeeded; only keeping its bytes would cross the budget
        self.cache.put(key, data, anon=len(data))
        while self.cache.usage()["anon"] > self._cache_bytes:
            self.cache.evict_oldest("anon")


def _cache_key(key: str, byte_range: ByteRequest | None) -> tuple[str, int, int] | None:
    """The chunk cache's key of a read: (file, start, end), -1 for "to the end"; None: not cached."""
    if byte_range is None:
        return (key, 0, -1)
    if isinstance(byte_range, RangeByteRequest):
        return (key, byte_range.start, byte_range.end)
    if isinstance(byte_range, SuffixByteRequest):
        return (key, -byte_range.suffix, -1)
    return None


def open_remote(
    url: str,
    storage_options: dict[str, Any] | None,
    *,
    cache_bytes: int | str = 0,
    budget: MemoryBudget | None = None,
) -> RemoteReads:
    """The read path of a remote store: :class:`RemoteReads` over Zarr's FsspecStore."""
    from vcfstore.memory.limits import parse_size

    cache = parse_size(cache_bytes) if cache_bytes else 0
    return RemoteReads(object_store(url, storage_options), url, cache, budget)


def missing_store_message(store: RemoteReads) -> str:
    """Why a URL holds no store: the bucket does not exist, or nothing is at the prefix."""
    inner = store._store
    assert isinstance(inner, FsspecStore)
    if not _bucket_exists(inner, str(store)):
        return f"{store}: {_no_bucket(inner)}"
    return f"{store}: no vcfstore panel store there (no zarr.json)"


def _bucket_exists(store: FsspecStore, where: str) -> bool:
    """Whether the bucket exists; refused credentials are an error here (``exists`` would say False)."""
    bucket = store.path.split("/", 1)[0]
    try:
        sync(store.fs._info(bucket))
    except FileNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001 - any failure of the client becomes one StoreError naming the store
        raise remote_error(where, f"looking up bucket {bucket!r}", e) from None
    return True


def _no_bucket(store: FsspecStore) -> str:
    return f"bucket {store.path.split('/', 1)[0]!r} does not exist"


def _staging_for(url: str) -> Path:
    """A fixed local directory per URL, so that a build interrupted before its upload resumes."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "vcfstore-staging" / f"{digest}-{url.rstrip('/').rsplit('/', 1)[-1]}"


class RemoteBuild:
    """A build to object storage: built in a local staging directory, then uploaded and checked.

    Creating it checks the target first (reachable, credentials accepted, bucket present, no
    finished store there unless ``force``), so a long build never ends in a refused upload.

    Parameters
    ----------
    url : str
        Where the store goes (``s3://bucket/prefix``).
    storage_options : dict, optional
        fsspec options (``key``, ``secret``, ``endpoint_url``, ``client_kwargs``, ...).
    staging : path, optional
        The local directory the store is built in (kept after the upload). By default a
        directory under the system's temporary directory, fixed per URL (so an interrupted build
        resumes) and removed once the upload is checked.
    force : bool
        Replace a finished store at ``url``.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None,
        staging: str | os.PathLike[str] | None = None,
        *,
        force: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self.storage_options = storage_options
        self.keep_staging = staging is not None
        self.staging = Path(staging) if staging is not None else _staging_for(self.url)
        self._store = object_store(self.url, storage_options, read_only=False)
        self._replace = self._check_target(force)

    def _call(self, what: str, coro: Any) -> Any:
        try:
            return sync(coro)
        except Exception as e:  # noqa: BLE001 - any failure of the client becomes one StoreError naming the store
            raise remote_error(self.url, what, e) from None

    def _present(self, key: str) -> bool:
        return bool(self._call(f"looking for {key}", self._store.exists(key)))

    def _check_target(self, force: bool) -> bool:
        """Whether objects at the URL must be removed before the upload; refuses what it must not replace."""
        if not _bucket_exists(self._store, self.url):
            raise StoreError(f"{self.url}: {_no_bucket(self._store)}; create it first")
        if self._present(_UPLOAD_MARKER):
            return True  # our own upload, interrupted: replaced without asking
        if self._present("zarr.json") and self._present(CHECKSUMS):
            if force:
                return True
            raise StoreError(f"{self.url} holds a finished store; pass force=True (--force) to replace it")
        if self._call("listing the target", _any_key(self._store)):
            raise StoreError(f"{self.url} holds objects that are not a vcfstore store; refusing to write there")
        return False

    def staged_identity(self) -> str | None:
        """The identity of a finished build in the staging directory (whose upload failed), else None."""
        from vcfstore.store.format import ATTR_KEY
        from vcfstore.store.reader import read_store_attrs

        attrs = read_store_attrs(self.staging) if self.staging.is_dir() else None
        meta = attrs[ATTR_KEY] if attrs is not None else {}
        return str(meta["identity"]) if meta.get("complete") and "identity" in meta else None

    def publish(self) -> PanelStore:
        """Upload the finished store from the staging directory, check every file's size, open it."""
        from vcfstore.store.reader import PanelStore

        if self._replace:
            # The root zarr.json goes first: from then on nothing opens the old store as valid.
            self._call("removing the old store", self._store.delete("zarr.json"))
            self._call("marking the upload", self._store.set(_UPLOAD_MARKER, _buffer(b"")))
            self._call("removing the old store", _delete_except(self._store, _UPLOAD_MARKER))
        else:
            self._call("marking the upload", self._store.set(_UPLOAD_MARKER, _buffer(b"")))
        files = sorted(p.relative_to(self.staging).as_posix() for p in self.staging.rglob("*") if p.is_file())
        self._call("uploading the store", _upload(self._store, self.staging, [k for k in files if k != "zarr.json"]))
        self._call("uploading the store", _upload(self._store, self.staging, ["zarr.json"]))
        self._call("finishing the upload", self._store.delete(_UPLOAD_MARKER))
        problems = verify_files(open_remote(self.url, self.storage_options), self.url, sizes_only=True)
        if problems:
            raise StoreError(f"{self.url}: the upload is incomplete: {problems[0]}; run the same build again")
        if not self.keep_staging:
            shutil.rmtree(self.staging, ignore_errors=True)
        return PanelStore(self.url, storage_options=self.storage_options)


def _buffer(data: bytes) -> Buffer:
    return default_buffer_prototype().buffer.from_bytes(data)


async def _any_key(store: Store) -> bool:
    async for _ in store.list():
        return True
    return False


async def _delete_except(store: FsspecStore, keep: str) -> None:
    paths = [f"{store.path}/{key}" async for key in store.list() if key != keep]
    if paths:
        await store.fs._rm(paths)  # batched: one request per thousand objects on S3


async def _upload(store: Store, root: Path, keys: list[str]) -> None:
    gate = asyncio.Semaphore(_CONCURRENT_UPLOADS)

    async def put(key: str) -> None:
        async with gate:
            data = await asyncio.to_thread((root / key).read_bytes)
            await store.set(key, _buffer(data))

    await asyncio.gather(*(put(key) for key in keys))
