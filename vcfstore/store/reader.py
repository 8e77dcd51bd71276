"""The panel store: one reference panel in a Zarr v3 group, read lazily and fork-safely.

The on-disk layout is described in :mod:`vcfstore.store.format`. A store is a local directory
or a URL on object storage (``s3://bucket/panel.vcfstore``, see :mod:`vcfstore.store.remote`).
Format 3's sharded ``alleles`` are read by :class:`ShardedAlleles` (the shard index, then only
the inner chunks a read needs, each checked against the checksum record: ``pread`` on a local
store, one round trip of range requests on object storage)
rather than through Zarr's per-chunk machinery, which costs about half a millisecond per inner
chunk here; anything else (format 2 stores, other layouts) is read through Zarr, checked file by
file. Both work the same on object storage: the pieces are byte-range reads of the shard objects.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vcfstore.errors import ArgumentError, StoreError
from vcfstore.store.format import ATTR_KEY, READABLE_FORMAT_VERSIONS, SITE_COLUMNS, STORE_FORMAT_VERSION
from vcfstore.store.vocab import Vocabulary, layout_tokens, pad_sites

if TYPE_CHECKING:
    from vcfstore.memory.budget import MemoryBudget
    from vcfstore.store.integrity import Where

# Zarr (and the integrity and object-storage layers on it) loads when a store opens, so that
# `import vcfstore` and the exact search work without it (the GPU benchmark's machine may lack it).
DEFAULT_CHUNK_CACHE = "256MB"  # an object store's per-process cache of compressed chunks
ALIGN_ROWS = 4096  # rows shifted at a time when a read does not start on a byte boundary


def open_store(
    path: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    budget: MemoryBudget | None = None,
    chunk_cache: int | str = DEFAULT_CHUNK_CACHE,
) -> PanelStore:
    """Open a panel store read-only. Only metadata is read; arrays are read on demand.

    Parameters
    ----------
    path : path or URL
        A store directory, or a URL on object storage (``s3://bucket/panel.vcfstore``).
    storage_options : dict, optional
        For URLs: fsspec's options (``key``, ``secret``, ``endpoint_url``, ``client_kwargs``,
        ``config_kwargs``, ...). Without credentials, the usual AWS environment applies.
    budget : MemoryBudget, optional
        For URLs: chunks read from object storage are cached in each process under it.
    chunk_cache : int or str
        For URLs: the ceiling of that cache per process ("256MB"; 0 turns it off).

    Raises
    ------
    StoreError
        If ``path`` is not a complete vcfstore panel store of a supported format version, or
        object storage cannot be reached or refuses the credentials.
    """
    return PanelStore(path, storage_options=storage_options, budget=budget, chunk_cache=chunk_cache)


def read_store_attrs(path: Path | Any, where: Where | None = None) -> dict[str, Any] | None:
    """All attributes of a vcfstore group at ``path`` (a directory or a Zarr store), or None if it is not one."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    from vcfstore.store.integrity import resolve

    store, where = resolve(path, where)
    if isinstance(path, Path) and not (path / "zarr.json").is_file():
        return None
    if not isinstance(path, Path) and sync(store.get("zarr.json", default_buffer_prototype())) is None:
        return None
    try:
        attrs = zarr.open_group(store, mode="r").attrs.asdict()
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - zarr raises many kinds for a damaged zarr.json
        raise StoreError(f"{where}: the store's metadata cannot be read ({e})") from None
    return attrs if isinstance(attrs.get(ATTR_KEY), dict) else None


class PanelStore:
    """A read-only view of one panel store, in a local directory or on object storage.

    Opening reads the group's metadata only. Zarr handles (and, for object storage, the
    filesystem client and its chunk cache) are opened lazily in the process that uses them and
    are reopened after a fork, so a store may be created before DataLoader workers start (fork,
    spawn or forkserver); it pickles as its path or URL, options and metadata.

    ``path`` is a :class:`~pathlib.Path` for a local store and the URL (a str) for object
    storage; see :func:`open_store` for the other parameters.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        storage_options: dict[str, Any] | None = None,
        budget: MemoryBudget | None = None,
        chunk_cache: int | str = DEFAULT_CHUNK_CACHE,
    ) -> None:
        from vcfstore.store.remote import is_url, missing_store_message

        self.remote = is_url(path)
        self.path: Path | str = os.fspath(path).rstrip("/") if self.remote else Path(path)
        if storage_options is not None and not self.remote:
            raise ArgumentError(f"storage_options is for stores on object storage (URLs), not {self.path}")
        self.storage_options, self.budget, self.chunk_cache = storage_options, budget, chunk_cache
        if self.remote:
            store = self._store(cached=False)
            attrs = read_store_attrs(store, self.path)
            if attrs is None:
                raise StoreError(missing_store_message(store))
        else:
            if not Path(self.path).exists():
                raise StoreError(f"{self.path}: no such store")
            attrs = read_store_attrs(Path(self.path))
        if attrs is None:
            raise StoreError(f"{self.path}: not a vcfstore panel store")
        meta = dict(attrs[ATTR_KEY])
        if meta.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise StoreError(
                f"{self.path}: store format version {meta.get('format_version')} is not supported "
                f"(this vcfstore reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))} and writes "
                f"{STORE_FORMAT_VERSION}); rebuild it"
            )
        if not meta.get("complete"):
            raise StoreError(
                f"{self.path}: the build of this store did not finish; run the same build again to resume it"
            )
        _check_meta(self.path, meta)
        self.meta = meta
        self._pid: int | None = None
        self._root: Any = None
        self._sharded: ShardedAlleles | None = None

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = {"path": self.path, "meta": self.meta}
        if self.remote:  # how to reach object storage again (each process opens its own client)
            state.update(storage_options=self.storage_options, budget=self.budget, chunk_cache=self.chunk_cache)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path, self.meta = state["path"], state["meta"]
        self.remote = isinstance(self.path, str)
        self.storage_options, self.budget = state.get("storage_options"), state.get("budget")
        self.chunk_cache = state.get("chunk_cache", DEFAULT_CHUNK_CACHE)
        self._pid, self._root, self._sharded = None, None, None

    def __repr__(self) -> str:
        return (
            f"PanelStore({str(self.path)!r}: {self.n_haplotypes} haplotypes, {self.n_sites} sites, "
            f"{self.n_windows} windows)"
        )

    @property
    def root(self) -> Any:
        """The Zarr group, opened in this process (reopened after a fork)."""
        if self._root is None or self._pid != os.getpid():
            from vcfstore.store.integrity import open_verified_group

            root = open_verified_group(self._store(cached=True), self.path)
            self._check_shapes(root)
            self._sharded = ShardedAlleles.of(root["alleles"])
            self._root, self._pid = root, os.getpid()
        return self._root

    def _store(self, *, cached: bool) -> Any:
        """A new Zarr store of this panel (unverified): LocalStore, or object storage with its chunk cache."""
        from vcfstore.store.integrity import resolve
        from vcfstore.store.remote import open_remote

        if not self.remote:
            return resolve(Path(self.path))[0]
        assert isinstance(self.path, str)
        return open_remote(
            self.path, self.storage_options, cache_bytes=self.chunk_cache if cached else 0, budget=self.budget
        )

    def _check_shapes(self, root: Any) -> None:
        """The arrays must have the shapes the metadata promises (a cheap guard against a mixed-up store)."""
        want = {
            "alleles": (self.n_haplotypes, (self.n_sites + 7) // 8),
            "windows": (self.n_windows, 2),
            **{f"sites/{name}": (self.n_sites,) for name in SITE_COLUMNS},
        }
        for name, shape in want.items():
            try:
                got = tuple(root[name].shape)
            except KeyError:
                raise StoreError(f"{self.path}: array {name} is missing; rebuild the store") from None
            if got != shape:
                raise StoreError(f"{self.path}: array {name} has shape {got}, the store's metadata says {shape}")

    def chunk_cache_stats(self) -> dict[str, Any] | None:
        """This process's cache of object-storage chunks (entries, hits, misses, bytes), or None."""
        wrapped = getattr(self.root.store, "_store", None)  # the VerifyingStore wraps the remote reads
        cache = getattr(wrapped, "cache", None)
        return None if cache is None else cache.stats()

    def verify(self, *, sizes_only: bool = False) -> list[str]:
        """Check every file of the store against its checksum record; one line per damaged part (empty: intact).

        ``sizes_only`` checks only that every file is there with its recorded size (no reads).
        """
        from vcfstore.store.integrity import open_verified_group, verify_files

        problems = verify_files(self._store(cached=False), self.path, sizes_only=sizes_only)
        if not problems:
            try:
                self._check_shapes(open_verified_group(self._store(cached=False), self.path))
            except StoreError as e:
                problems.append(str(e))
        return problems

    # --- sizes and metadata ----------------------------------------------------------------
    @property
    def n_haplotypes(self) -> int:
        return int(self.meta["n_haplotypes"])

    @property
    def n_sites(self) -> int:
        return int(self.meta["n_sites"])

    @property
    def n_windows(self) -> int:
        return int(self.meta["n_windows"])

    @property
    def max_seq_len(self) -> int:
        return int(self.meta["max_seq_len"])

    @property
    def vocab(self) -> Vocabulary:
        return Vocabulary.from_dict(self.meta["vocab"])

    @property
    def identity(self) -> str:
        """A digest of the input and build parameters; indexes record it to refuse a foreign store."""
        return str(self.meta["identity"])

    @property
    def contigs(self) -> list[tuple[str, int, int]]:
        """Per contig: (name, first site, one past the last site)."""
        return [(str(c), int(a), int(b)) for c, a, b in self.meta["contig_runs"]]

    @cached_property
    def samples(self) -> np.ndarray:
        return plain_strings(self.root["samples"][:])

    @cached_property
    def positions(self) -> np.ndarray:
        return np.asarray(self.root["sites/position"][:])

    @cached_property
    def af(self) -> np.ndarray:
        return np.asarray(self.root["sites/af"][:])

    @cached_property
    def windows(self) -> np.ndarray:
        return np.asarray(self.root["windows"][:])

    def site_table(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Per-site columns (contig, position, id, ref, alt, af) for sites [start, stop)."""
        sl = slice(start, self.n_sites if stop is None else stop)
        names = np.asarray([r[0] for r in self.contigs] or [""])
        contig_idx = np.asarray(self.root["sites/contig"][sl])
        return {
            "contig": names[contig_idx],
            "position": self.positions[sl],
            "id": plain_strings(self.root["sites/id"][sl]),
            "ref": plain_strings(self.root["sites/ref"][sl]),
            "alt": plain_strings(self.root["sites/alt"][sl]),
            "af": self.af[sl],
        }

    # --- windows ---------------------------------------------------------------------------
    def check_window(self, w: int) -> int:
        """``w`` as an int, or a :class:`StoreError` naming the valid range."""
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)):
            raise StoreError(f"window index must be an integer, not {type(w).__name__}")
        if not 0 <= w < self.n_windows:
            raise StoreError(
                f"window {w} does not exist: the store has {self.n_windows} windows (0..{self.n_windows - 1})"
            )
        return int(w)

    def window_sites(self, w: int) -> range:
        """The site indices of window ``w``."""
        start, end = self.windows[self.check_window(w)]
        return range(int(start), int(end))

    def window_alleles(self, w: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Alleles of window ``w``: uint8 [n_rows, n_sites_in_window], 0 = REF, 1 = ALT.

        ``rows`` selects haplotypes (any order, repeats allowed); None reads all of them.
        """
        sites = self.window_sites(w)
        return self.read_alleles(sites.start, sites.stop, rows)

    def window_packed(self, w: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Alleles of window ``w`` bit-packed: uint8 [n_rows, ceil(n_sites_in_window / 8)] (see :meth:`read_packed`)."""
        sites = self.window_sites(w)
        return self.read_packed(sites.start, sites.stop, rows)

    def read_alleles(self, start: int, stop: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Alleles of sites [start, stop) for ``rows`` (all haplotypes by default): uint8 0/1 [n_rows, stop - start]."""
        return np.unpackbits(self.read_packed(start, stop, rows), axis=1, count=stop - start)

    def read_packed(self, start: int, stop: int, rows: np.ndarray | None = None) -> np.ndarray:
        """Alleles of sites [start, stop) bit-packed from ``start``: uint8 [n_rows, ceil((stop - start) / 8)].

        Site ``start + j`` is bit ``7 - j % 8`` of byte ``j // 8`` (``np.packbits`` order); the bits
        after the last site are 0. ``rows`` selects haplotypes (any order, repeats allowed); None
        reads all of them. Eight times smaller than :meth:`read_alleles`: 129 bytes per
        haplotype for a window of 1028 sites.
        """
        if not 0 <= start <= stop <= self.n_sites:
            raise StoreError(f"site range [{start}, {stop}) is outside the store's {self.n_sites} sites")
        uniq = inverse = None
        if rows is not None:
            rows = np.asarray(rows)
            if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
                raise StoreError(f"rows must be a 1-D array of haplotype indices, got {rows.dtype} {rows.shape}")
            if rows.size and (rows.min() < 0 or rows.max() >= self.n_haplotypes):
                raise StoreError(f"rows must lie in [0, {self.n_haplotypes}); got {rows.min()}..{rows.max()}")
            # Read each needed haplotype once, in order, then expand back to the caller's order.
            uniq, inverse = np.unique(rows, return_inverse=True)
        first, last = start // 8, (stop + 7) // 8
        if stop == start or (uniq is not None and uniq.size == 0):
            raw = np.zeros((self.n_haplotypes if uniq is None else uniq.size, last - first), np.uint8)
        else:
            root = self.root  # opens (and finds the sharded reader) in this process
            if self._sharded is not None:
                raw = self._sharded.read(first, last, uniq)
            else:
                arr = root["alleles"]
                raw = np.asarray(arr[:, first:last] if uniq is None else arr.oindex[uniq, first:last])
        packed = _align_bits(raw, start % 8, stop - start)
        return packed if inverse is None else packed[inverse]

    def read_peak_bytes(self, start: int, stop: int) -> int:
        """A bound of the memory :meth:`read_packed` of sites [start, stop) of every haplotype holds at its peak.

        The bytes read and the result their bits are shifted into (twice the result's size); two
        decoded chunks; the largest compressed shard file a whole-panel read takes in, one at a
        time (twice: read, then copied out of Zarr's buffer; sizes as recorded at build); 64 KB
        of bookkeeping. For a small result the chunks dominate (a window of a 2,008-haplotype
        panel decodes 514 KB shards for a 259 KB result).
        """
        from vcfstore.store.builder import inner_chunk_rows

        params = self.meta["params"]
        n = self.n_haplotypes
        first, last = start // 8, (stop + 7) // 8
        chunk = inner_chunk_rows(self.n_haplotypes, params["haplotype_chunk"]) * params["chunk_sites"] // 8
        self.root  # noqa: B018 - opens the arrays (and finds the sharded reader) in this process
        stored = self._sharded.largest_shard(first, last) if self._sharded is not None else chunk
        shift = min(n, ALIGN_ROWS) * ((stop - start + 7) // 8)
        return 2 * n * (last - first) + 2 * chunk + 2 * stored + 2 * shift + (1 << 16)

    def window_tokens(self, w: int, rows: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        """Tokens of window ``w``: int64 [n_rows, max_seq_len] laid out ``[SOS] sites [EOS] pad``.

        ``mask`` is a boolean [max_seq_len] array (True = masked); masked sites get the mask id.
        """
        return layout_tokens(self.window_alleles(w, rows), self.max_seq_len, self.vocab, mask)

    def window_af(self, w: int) -> np.ndarray:
        """Allele frequencies of window ``w`` at token positions: float32 [max_seq_len], 0 at SOS/EOS/pad."""
        sites = self.window_sites(w)
        return pad_sites(self.af[sites.start : sites.stop], self.max_seq_len)

    # --- accounting ------------------------------------------------------------------------
    def disk_usage(self) -> dict[str, int]:
        """Bytes on disk (or in object storage) per array (path relative to the store)."""
        from vcfstore.store.integrity import file_sizes

        out: dict[str, int] = {}
        for name, size in file_sizes(self._store(cached=False)).items():
            rel = name.split("/")
            key = "/".join(rel[:2]) if rel[0] == "sites" and len(rel) > 2 else rel[0]
            out[key] = out.get(key, 0) + size
        return dict(sorted(out.items()))

    def info(self) -> dict[str, Any]:
        """A summary for ``vcfstore info``: counts, windows, bytes on disk, compression ratio."""
        usage = self.disk_usage()
        genotypes = self.n_haplotypes * self.n_sites
        lengths = self.windows[:, 1] - self.windows[:, 0]
        allele_bytes = usage.get("alleles", 0)
        return {
            "path": str(self.path),
            "format_version": self.meta["format_version"],
            "identity": self.identity,
            "n_samples": len(self.samples),
            "n_haplotypes": self.n_haplotypes,
            "n_sites": self.n_sites,
            "n_windows": self.n_windows,
            "window_sites": {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())},
            "max_seq_len": self.max_seq_len,
            "contigs": [r[0] for r in self.contigs],
            "af_source": self.meta["params"]["af_from"],
            "input": self.meta["input"],
            "ingest": self.meta["counts"],
            "bytes_on_disk": usage,
            "bytes_total": sum(usage.values()),
            "bits_per_genotype": allele_bytes * 8 / max(genotypes, 1),
            "ratio_vs_uint8": genotypes / max(allele_bytes, 1),
            "ratio_vs_int64_tokens": genotypes * 8 / max(allele_bytes, 1),
            "damage_seen_without_reading": self.verify(sizes_only=True),
        }


def _align_bits(raw: np.ndarray, offset: int, n_sites: int) -> np.ndarray:
    """Packed bytes whose first site is bit ``offset`` of byte 0, shifted to start at bit 0, padding zeroed.

    Shifted ``ALIGN_ROWS`` rows at a time into the result, so a read holds the bytes read and
    the result, not three copies of a window.
    """
    n_bytes = (n_sites + 7) // 8
    if offset:
        out = np.empty((len(raw), n_bytes), dtype=np.uint8)
        for s in range(0, len(raw), ALIGN_ROWS):
            rows = raw[s : s + ALIGN_ROWS]
            head = out[s : s + ALIGN_ROWS]
            np.left_shift(rows[:, :n_bytes], np.uint8(offset), out=head)
            tail = rows[:, 1 : n_bytes + 1] >> np.uint8(8 - offset)
            head[:, : tail.shape[1]] |= tail
        raw = out
    else:
        raw = np.ascontiguousarray(raw[:, :n_bytes])
    if n_sites % 8:
        raw[:, -1] &= np.uint8((0xFF << (8 - n_sites % 8)) & 0xFF)
    return raw


class ShardedAlleles:
    """Reads the ``alleles`` of a format 3 store: shards of every haplotype, inner chunks of ``rows`` haplotypes.

    A read of all haplotypes reads each shard it touches whole (checked against the file's
    SHA-256) and decodes every inner chunk; a read of some haplotypes reads the shard index and
    only their inner chunks (each checked against its own digest): with ``pread`` on the calling
    thread from a local store, in one round trip of concurrent range requests from object storage.
    """

    def __init__(self, store: Any, n_haplotypes: int, rows: int, width: int) -> None:
        from numcodecs import Zstd

        self.store, self.n_haplotypes, self.rows, self.width = store, n_haplotypes, rows, width
        self._zstd = Zstd()

    @classmethod
    def of(cls, array: Any) -> ShardedAlleles | None:
        """A reader for ``array`` if it has vcfstore's sharded layout and is read checked (else None: use Zarr)."""
        from vcfstore.store.integrity import VerifyingStore, sharded_index_nbytes

        meta = array.metadata.to_dict()
        store = array.store_path.store
        if not isinstance(store, VerifyingStore) or sharded_index_nbytes(meta) is None:
            return None
        conf = meta["codecs"][0]["configuration"]
        if [c["name"] for c in conf["codecs"]] != ["bytes", "zstd"] or meta["data_type"] != "uint8":
            return None
        shard = meta["chunk_grid"]["configuration"]["chunk_shape"]
        inner = conf["chunk_shape"]
        if inner[1] != shard[1] or shard[0] < array.shape[0]:
            return None  # not one shard column of inner chunks along haplotypes
        return cls(store, int(array.shape[0]), int(inner[0]), int(inner[1]))

    def _key(self, column: int) -> str:
        return f"alleles/c/0/{column}"

    def largest_shard(self, first: int, last: int) -> int:
        """Bytes on disk of the largest shard file holding bytes [first, last) (as recorded at build)."""
        files = self.store.record.files
        columns = range(first // self.width, (last - 1) // self.width + 1)
        return max((files.get(self._key(c), (0, ""))[0] for c in columns), default=0)

    def _decode(self, data: bytes | memoryview, key: str, i: int) -> np.ndarray:
        chunk = np.frombuffer(self._zstd.decode(data), dtype=np.uint8)
        if chunk.size != self.rows * self.width:
            raise StoreError(
                f"{self.store.describe(key)}, inner chunk {i} decodes to {chunk.size} bytes, not "
                f"{self.rows * self.width}; rebuild the store"
            )
        return chunk.reshape(self.rows, self.width)

    def read(self, first: int, last: int, rows: np.ndarray | None) -> np.ndarray:
        """Bytes [first, last) of ``rows`` (sorted, unique; None: all haplotypes): uint8 [n_rows, last - first]."""
        columns = range(first // self.width, (last - 1) // self.width + 1)
        n_inner = -(-self.n_haplotypes // self.rows)
        which = list(range(n_inner)) if rows is None else np.unique(rows // self.rows).tolist()
        # Most of a shard's inner chunks needed: one read of the whole file beats a read per chunk.
        whole = [c for c in columns if 2 * len(which) > n_inner]
        pieces = self.store.read_inner_chunks({self._key(c): which for c in columns if c not in whole})
        out = np.empty((self.n_haplotypes if rows is None else len(rows), last - first), dtype=np.uint8)
        for c in columns:
            key = self._key(c)
            if c in whole:
                data, index = self.store.read_shard(key)
                pieces[key] = [data[int(index[i, 0]) : int(index[i, 0] + index[i, 1])] for i in which]
                del data  # the pieces are copies: one shard file in memory at a time
            lo, hi = max(first, c * self.width), min(last, (c + 1) * self.width)
            for i, piece in zip(which, pieces.pop(key), strict=True):
                chunk = self._decode(piece, key, i)[:, lo - c * self.width : hi - c * self.width]
                r0, r1 = i * self.rows, min(self.n_haplotypes, (i + 1) * self.rows)
                if rows is None:
                    out[r0:r1, lo - first : hi - first] = chunk[: r1 - r0]
                else:
                    sel = np.flatnonzero((rows >= r0) & (rows < r1))
                    out[sel, lo - first : hi - first] = chunk[rows[sel] - r0]
        return out


def plain_strings(values: np.ndarray) -> np.ndarray:
    """Zarr's variable-length strings (NumPy StringDType) as a plain fixed-width str array."""
    return np.array(np.asarray(values).tolist(), dtype=str)


# The metadata keys the reader relies on, with their types (a damaged zarr.json gives a one-line error).
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "identity": str,
    "n_haplotypes": int,
    "n_sites": int,
    "n_windows": int,
    "max_seq_len": int,
    "vocab": dict,
    "contig_runs": list,
    "params": dict,
    "input": dict,
    "counts": dict,
}


def _check_meta(path: Path | str, meta: dict[str, Any]) -> None:
    from vcfstore.store.integrity import key_location

    file = key_location(path, "zarr.json")
    for key, want in _META_TYPES.items():
        value = meta.get(key)
        if not isinstance(value, want) or isinstance(value, bool):
            raise StoreError(f"{file}: store attribute {key!r} is missing or has the wrong type; the store is damaged")
    try:
        Vocabulary.from_dict(meta["vocab"])
        runs = [(str(c), int(a), int(b)) for c, a, b in meta["contig_runs"]]
    except (TypeError, ValueError) as e:
        raise StoreError(f"{file}: store attribute 'vocab' or 'contig_runs' is damaged ({e})") from None
    if meta["n_sites"] < 1 or meta["n_haplotypes"] < 2 or not runs or runs[-1][2] != meta["n_sites"]:
        raise StoreError(f"{file}: store attributes disagree (sites, haplotypes, contigs); damaged")
