"""Per-window FAISS indexes on disk: streamed build, atomic writes, zero-copy mapped reads.

An index set is a directory bound to one panel store::

    manifest.json      format, store identity, kind, dimension; per window: file, mask (bits),
                       mask version, weights digest, vector count, size, SHA-256
    w00000.faiss ...   one FAISS index per window

Why it is built this way (each measured here, see the README):

* ``faiss.IO_FLAG_MMAP`` copies a flat index into anonymous RAM; ``IO_FLAG_MMAP_IFC`` maps the
  codes of flat, scalar-quantizer and PQ indexes zero-copy. FAISS then advises the mapping
  ``MADV_RANDOM``, which makes a cold first search several times slower, so the mapping is
  re-advised after opening (:data:`DEFAULT_ADVICE`).
* FAISS aborts the whole process when a mapped index is mutated, so indexes are only reachable
  through :class:`MappedIndex`, which raises a Python error instead.
* ``write_index`` truncates a file in place and a reader that has it mapped dies of SIGBUS, so
  every index is written to a temporary file, fsynced, and moved over the old one with
  ``os.replace`` (a reader keeps its old, now unlinked, inode).
* Indexes whose codes are stored flat (``IndexFlatCodes``: flat fp32, SQ fp16/8, PQ) are
  written by streaming the codes of each encoded chunk to the file, so building a window never
  holds the window's index in RAM; other kinds (IVF, HNSW) are built in RAM and written.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import json
import mmap
import os
import struct
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .budget import MemoryBudget, malloc_trim
from .cache import LruCache
from .encode import Embedding, embed, embedding_device, embedding_digest, eval_mode, to_numpy
from .errors import VcfstoreError
from .masks import masks_version
from .store import PanelStore

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
KINDS = {"flat": "Flat", "fp16": "SQfp16"}
ADVICE = {
    "normal": mmap.MADV_NORMAL,
    "random": mmap.MADV_RANDOM,
    "sequential": mmap.MADV_SEQUENTIAL,
    "willneed": mmap.MADV_WILLNEED,
}
DEFAULT_ADVICE = "sequential"  # measured, 1.59 GB window: cold first search 0.35 s; normal 0.71 s; random 4.3 s


class IndexSetError(VcfstoreError):
    """An index set or index file is missing, corrupt, foreign, or used wrongly."""


class StaleIndexError(IndexSetError):
    """An index was built with other masks or other embedding weights than the caller's."""


class ReadOnlyIndexError(IndexSetError):
    """An attempt to modify a memory-mapped index (FAISS would abort the process)."""


def _faiss() -> Any:
    import faiss

    return faiss


# A child forked from a process that had FAISS loaded inherits libgomp's state with a thread
# pool that no longer exists, and its first parallel search can hang (measured here: a DataLoader
# fork worker searching an index the parent had searched never returned). Such a child searches
# on one thread; spawned or forkserver workers start clean and keep OpenMP's threads.
_FORKED_WITH_FAISS = False


def _after_fork_in_child() -> None:
    global _FORKED_WITH_FAISS
    _FORKED_WITH_FAISS = _FORKED_WITH_FAISS or "faiss" in sys.modules


os.register_at_fork(after_in_child=_after_fork_in_child)


def _set_threads(requested: int | None) -> None:
    if _FORKED_WITH_FAISS:
        _faiss().omp_set_num_threads(1)
    elif requested is not None:
        _faiss().omp_set_num_threads(requested)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
class _CodesTemplate:
    """The byte layout of an ``IndexFlatCodes`` file, learnt from FAISS's own serializer.

    A file for n vectors is a header whose count fields grow with n, then the codes, then a
    trailer that does not change. The count fields are ``ntotal`` (n) and the codes' length
    (n * code_size bytes, or n * d floats for flat indexes in current FAISS): the int64s that read
    0, s, 2s for 0, 1 and 2 vectors with s one of those steps. (Other steps that fit are the same
    bytes seen at a shifted offset.) Each file written from the template is read back and checked.
    """

    def __init__(self, index: Any, like: np.ndarray) -> None:
        faiss = _faiss()
        cs = self.code_size = int(index.sa_code_size())
        # Random probes scaled like the data: their codes are distinct and do not occur by chance
        # in the header (real rows can be identical, or encode to runs of zero bytes).
        rng = np.random.default_rng(0)
        probe = (rng.standard_normal((2, like.shape[1])) * like.std() + like.mean()).astype(np.float32)
        h = []
        for n in (0, 1, 2):
            clone = faiss.clone_index(index)
            if n:
                clone.add(probe[:n])
            h.append(faiss.serialize_index(clone).tobytes())
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


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 22), b""):
            h.update(piece)
    return h.hexdigest()


HEAD_BYTES = 1 << 16


def _head_sha256(path: Path) -> str:
    """Digest of the first 64 KiB: checked at every open, so a damaged header never reaches FAISS."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()


def _factory(kind: str) -> str:
    return KINDS.get(kind, kind)


def _window_file(w: int) -> str:
    return f"w{w:05d}.faiss"


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def advise_mapping(path: Path, advice: str) -> int:
    """Re-advise every mapping of ``path`` in this process; returns the bytes advised.

    FAISS maps ``IO_FLAG_MMAP_IFC`` indexes with ``MADV_RANDOM``, which disables read-ahead.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    target = str(Path(path).resolve())
    total = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if libc.madvise(lo, hi - lo, ADVICE[advice]) == 0:
                    total += hi - lo
    return total


class MappedIndex:
    """A read-only view of one window's index: ``search`` only.

    FAISS aborts the process when a mapped index is modified, so ``add``, ``reset`` and the like
    raise :class:`ReadOnlyIndexError` here instead of reaching FAISS.
    """

    def __init__(self, index: Any, path: Path, mapped: bool) -> None:
        self._index, self.path, self.mapped = index, path, mapped
        self.ntotal, self.d = int(index.ntotal), int(index.d)

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(x, k)

    def reconstruct_n(self, start: int, n: int) -> np.ndarray:
        return self._index.reconstruct_n(start, n)

    def __getattr__(self, name: str) -> Any:
        if name in ("add", "add_with_ids", "reset", "train", "remove_ids", "merge_from", "update_vectors"):
            raise ReadOnlyIndexError(
                f"index {self.path.name} is opened read-only (FAISS aborts on changes to a mapped index); "
                "rebuild it with IndexSet.rebuild instead"
            )
        raise AttributeError(name)


@dataclass(frozen=True)
class WindowEntry:
    """What the manifest records about one window's index."""

    window: int
    file: str
    mask_version: str
    mask_bits: str
    weights: str
    n_vectors: int
    dim: int
    size: int
    sha256: str
    head_sha256: str
    max_norm2: float
    built: str

    def mask(self, max_seq_len: int) -> np.ndarray:
        bits = np.frombuffer(base64.b64decode(self.mask_bits), dtype=np.uint8)
        return np.unpackbits(bits)[:max_seq_len].astype(bool)


def _pack_mask(mask: np.ndarray) -> str:
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool)).tobytes()).decode()


class IndexSet:
    """Per-window FAISS indexes of a panel store, on disk, opened memory-mapped on demand.

    Use :meth:`build` to write (or resume writing) a set and :meth:`open` to read one. Nothing
    FAISS is opened until the first search in a process, so an index set may be created before
    DataLoader workers fork; it pickles as its directory and settings.
    """

    def __init__(
        self,
        directory: Path,
        store: PanelStore,
        manifest: dict[str, Any],
        budget: MemoryBudget | None,
        *,
        max_open: int | None = None,
        omp_threads: int | None = None,
        advice: str = DEFAULT_ADVICE,
        gpu: bool = False,
    ) -> None:
        self.directory, self.store, self.manifest = Path(directory), store, manifest
        self.budget, self.max_open, self.omp_threads = budget, max_open, omp_threads
        if advice not in ADVICE:
            raise IndexSetError(f"advice must be one of {sorted(ADVICE)}, not {advice!r}")
        self.advice, self.gpu = advice, gpu
        self._cache: LruCache[MappedIndex] | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._gpu_res: tuple[int, Any] | None = None
        self._warned_gpu = False

    # --- metadata --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def entry(self, w: int) -> WindowEntry:
        """The manifest's record of window ``w``'s index."""
        self.store.window_sites(w)  # a clear error for an unknown window
        e = self.manifest["windows"].get(str(int(w)))
        if e is None:
            raise IndexSetError(f"window {w} has no index in {self.directory} (the build did not reach it)")
        return WindowEntry(**e)

    def mask(self, w: int) -> np.ndarray:
        """The token mask window ``w``'s index was built with (bool [max_seq_len])."""
        return self.entry(w).mask(self.store.max_seq_len)

    def stale_windows(
        self,
        *,
        embedding: Embedding | None = None,
        masks: Sequence[np.ndarray] | None = None,
        weights_version: str | None = None,
    ) -> list[int]:
        """Windows whose index is missing or was built with other weights or masks than these."""
        weights = embedding_digest(embedding, weights_version) if embedding is not None or weights_version else None
        stale = []
        for w in range(self.store.n_windows):
            e = self.manifest["windows"].get(str(w))
            if e is None or (weights is not None and e["weights"] != weights):
                stale.append(w)
            elif masks is not None and e["mask_bits"] != _pack_mask(masks[w]):
                stale.append(w)
        return stale

    def check_fresh(self, w: int, *, mask: np.ndarray | None = None, weights: str | None = None) -> None:
        """Raise :class:`StaleIndexError` if window ``w``'s index does not match ``mask``/``weights``."""
        e = self.entry(w)
        if mask is not None and e.mask_bits != _pack_mask(mask):
            raise StaleIndexError(
                f"window {w}: the query mask differs from the mask its index was built with "
                f"({e.mask_version}); rebuild the index set for this epoch's masks or search with the same mask"
            )
        if weights is not None and e.weights != weights:
            raise StaleIndexError(f"window {w}: the index was built with other embedding weights; call rebuild()")

    # --- building --------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        store: PanelStore,
        embedding: Embedding,
        directory: str | os.PathLike[str],
        masks: Sequence[np.ndarray],
        kind: str = "flat",
        *,
        forward_kwargs: dict[str, Any] | None = None,
        weights_version: str | None = None,
        windows: Sequence[int] | None = None,
        batch_rows: int = 64,
        device: Any = None,
        budget: MemoryBudget | None = None,
        workers: int = 1,
        progress: bool = True,
    ) -> IndexSet:
        """Write (or resume writing) one index per window of ``store``.

        Parameters
        ----------
        store : PanelStore
        embedding : torch.nn.Module or callable
            Called as ``embedding(tokens [n, L], af=af [n, L], **forward_kwargs)`` -> [n, L, D],
            in eval mode under ``torch.no_grad()``, on its own device (or ``device``).
        directory : path
            The index set's directory (created if missing).
        masks : sequence of bool [max_seq_len] arrays
            One mask per window (e.g. ``MaskSchedule.at(store, epoch, rate)``); references are
            encoded masked exactly there. Its ``mask_version`` is recorded.
        kind : str
            ``"flat"`` (exact L2, fp32), ``"fp16"`` (scalar quantizer, half the bytes) or any
            FAISS factory string.
        windows : sequence of int, optional
            Build only these windows (default: all).
        batch_rows : int
            Haplotypes encoded at once. Peak anonymous memory of a streamed build is about
            ``12 * batch_rows * L * D * 4`` bytes with VCF-Bert's layer (measured; the layer's
            intermediates dominate), whatever the number of haplotypes; kinds that cannot stream
            (IVF, HNSW) also hold one window's index.

        workers : int
            Windows built at once, in threads: encoding one window overlaps writing and hashing
            another (each worker holds its own batch, so peak memory grows with it).

        Returns
        -------
        IndexSet
            The set, opened for searching.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if len(masks) != store.n_windows:
            raise IndexSetError(f"masks has {len(masks)} entries; the store has {store.n_windows} windows")
        weights = embedding_digest(embedding, weights_version)
        version = masks_version(masks)
        manifest = _load_manifest(directory) if (directory / MANIFEST).exists() else None
        if manifest is not None and manifest["store"] != store.identity:
            raise IndexSetError(f"{directory} holds indexes of another store; use another directory")
        if manifest is not None and manifest["kind"] != kind:
            raise IndexSetError(f"{directory} holds {manifest['kind']!r} indexes, not {kind!r}; use another directory")
        todo = list(range(store.n_windows)) if windows is None else [store._check_window(w) for w in windows]
        builder = _Builder(store, embedding, forward_kwargs, device, batch_rows, kind, budget)
        if manifest is None:
            manifest = {
                "format_version": FORMAT_VERSION,
                "store": store.identity,
                "kind": kind,
                "factory": _factory(kind),
                "dim": None,
                "mappable": None,
                "windows": {},
            }
        from tqdm.auto import tqdm

        def valid(w: int) -> bool:  # written by an earlier (perhaps killed) build with these inputs
            e = manifest["windows"].get(str(w))
            path = directory / e["file"] if e is not None else None
            return bool(
                e is not None
                and e["weights"] == weights
                and e["mask_bits"] == _pack_mask(np.asarray(masks[w], dtype=bool))
                and path.is_file()
                and path.stat().st_size == e["size"]
            )

        pending = [w for w in todo if not valid(w)]
        bar = tqdm(total=len(todo), unit=" windows", desc=f"indexing {directory.name}", disable=not progress)
        bar.update(len(todo) - len(pending))
        lock = threading.Lock()
        written = 0

        def one(w: int) -> None:
            nonlocal written
            mask = np.asarray(masks[w], dtype=bool)
            entry = builder.write(w, mask, directory / _window_file(w))
            with lock:  # the manifest is rewritten atomically after every window, in any order
                manifest["dim"] = entry.pop("dim")
                manifest["mappable"] = entry.pop("mappable")
                manifest["windows"][str(w)] = {
                    **entry,
                    "dim": manifest["dim"],
                    "window": w,
                    "mask_version": version,
                    "mask_bits": _pack_mask(mask),
                    "weights": weights,
                }
                _atomic_write_bytes(directory / MANIFEST, json.dumps(manifest, indent=1).encode())
                written += entry["size"]
                bar.set_postfix_str(f"{written / 1e6:,.0f} MB written")
                bar.update(1)

        # Eval mode once for the whole build: threads toggling it per window would race.
        with eval_mode(embedding):
            if workers <= 1 or len(pending) <= 1:
                for w in pending:
                    one(w)
            else:
                with ThreadPoolExecutor(workers, thread_name_prefix="vcfstore-index") as pool:
                    list(pool.map(one, pending))
        bar.close()
        return cls(directory, store, manifest, budget)

    def rebuild(
        self,
        embedding: Embedding,
        masks: Sequence[np.ndarray],
        *,
        forward_kwargs: dict[str, Any] | None = None,
        weights_version: str | None = None,
        **kwargs: Any,
    ) -> list[int]:
        """Rebuild only the stale windows (other weights or masks, or missing); returns them."""
        stale = self.stale_windows(embedding=embedding, masks=masks, weights_version=weights_version)
        if stale:
            fresh = IndexSet.build(
                self.store,
                embedding,
                self.directory,
                masks,
                self.kind,
                windows=stale,
                forward_kwargs=forward_kwargs,
                weights_version=weights_version,
                budget=self.budget,
                **kwargs,
            )
            self.manifest = fresh.manifest
            if self._cache is not None:
                for w in stale:
                    self._cache.pop(w)
        return stale

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        store: PanelStore,
        budget: MemoryBudget | None = None,
        *,
        max_open: int | None = None,
        omp_threads: int | None = None,
        advice: str = DEFAULT_ADVICE,
        gpu: bool = False,
    ) -> IndexSet:
        """Open an index set for ``store`` (reads the manifest only).

        Parameters
        ----------
        budget : MemoryBudget, optional
            Opened indexes are cached in an LRU registered with the budget: mapped bytes count
            against its soft mapped figure, indexes loaded into RAM against its hard one.
        max_open : int, optional
            A count limit on open indexes on top of the budget.
        omp_threads : int, optional
            FAISS OpenMP threads for searches. A process forked from one that had FAISS loaded
            (a DataLoader fork worker) always searches on one thread: libgomp can hang there.
        advice : {"normal", "sequential", "willneed", "random"}
            How to re-advise mapped indexes after opening (FAISS leaves them "random").
        gpu : bool
            Copy each opened index to the GPU and search there, when faiss-gpu sees a CUDA device
            (the copy is admitted against the budget's ``gpu_limit``); else search on the CPU.
        """
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise IndexSetError(f"{directory}: no index set here (no {MANIFEST})")
        manifest = _load_manifest(directory)
        if manifest["store"] != store.identity:
            raise IndexSetError(f"{directory}: these indexes were built for another store (identity differs)")
        return cls(
            directory, store, manifest, budget, max_open=max_open, omp_threads=omp_threads, advice=advice, gpu=gpu
        )

    def _index_cache(self) -> LruCache[MappedIndex]:
        if self._cache is None or self._pid != os.getpid():
            if self._cache is not None and self.budget is not None:
                self.budget.unregister(self._cache)  # the parent's cache, inherited by a fork
            self._cache = LruCache("faiss indexes", self.budget, max_entries=self.max_open)
            self._pid = os.getpid()
        return self._cache

    def index(self, w: int) -> MappedIndex:
        """Window ``w``'s index, opened (mapped where the kind allows) and cached."""
        cache = self._index_cache()
        found = cache.get(w)
        if found is not None:
            return found
        with self._lock:
            if w in cache:  # another thread opened it meanwhile
                return cache.get(w)  # type: ignore[return-value]
            found, sizes = self._open_index(w)
            cache.put(w, found, **sizes)
        return found

    def _open_index(self, w: int) -> tuple[MappedIndex, dict[str, int]]:
        faiss = _faiss()
        e = self.entry(w)
        path = self.directory / e.file
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IndexSetError(f"window {w}: index file {path} is missing; rebuild it") from None
        if size != e.size:
            raise IndexSetError(
                f"window {w}: index file {path.name} has {size} bytes, the manifest says {e.size} "
                "(truncated or replaced); rebuild it"
            )
        if _head_sha256(path) != e.head_sha256:
            raise IndexSetError(
                f"window {w}: index file {path.name} is corrupt (its header does not match the manifest); rebuild it"
            )
        mappable = bool(self.manifest["mappable"])
        on_gpu = self._use_gpu()
        cache = self._index_cache()
        what = f"opening window {w}'s index"
        if on_gpu:
            cache.admit(what, gpu=size)  # the CPU side is only mapped, and dropped after the copy
        else:
            cache.admit(what, anon=0 if mappable else size, mapped=size if mappable else 0)
        flags = faiss.IO_FLAG_MMAP_IFC if mappable else 0
        try:
            raw = faiss.read_index(str(path), flags)
        except RuntimeError as err:
            raise IndexSetError(f"window {w}: index file {path.name} is corrupt ({str(err).splitlines()[0]})") from None
        if raw.d != e.dim or raw.ntotal != e.n_vectors:
            raise IndexSetError(
                f"window {w}: index file {path.name} holds {raw.ntotal} vectors of dimension {raw.d}, "
                f"the manifest says {e.n_vectors} of {e.dim}"
            )
        if on_gpu:
            return MappedIndex(faiss.index_cpu_to_gpu(self._gpu_resources(), 0, raw), path, False), {"gpu": size}
        if mappable:
            advise_mapping(path, self.advice)
        return MappedIndex(raw, path, mappable), {"anon": 0 if mappable else size, "mapped": size if mappable else 0}

    def _use_gpu(self) -> bool:
        """Search on the GPU: asked for, and faiss-gpu sees a CUDA device (else the CPU, with a warning)."""
        if not self.gpu:
            return False
        faiss = _faiss()
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            return True
        if not self._warned_gpu:
            warnings.warn(
                "IndexSet(gpu=True): faiss has no GPU support or sees no CUDA device; searching on the CPU",
                stacklevel=3,
            )
            self._warned_gpu = True
        return False

    def _gpu_resources(self) -> Any:
        """One set of FAISS GPU resources (scratch memory, streams) per process."""
        if self._gpu_res is None or self._gpu_res[0] != os.getpid():
            self._gpu_res = (os.getpid(), _faiss().StandardGpuResources())
        return self._gpu_res[1]

    # --- searching -------------------------------------------------------------------------
    def search(self, window: int, vectors: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed haplotypes of each query vector in ``window``'s index.

        Parameters
        ----------
        vectors : array or tensor [n, dim]
            Batched queries of one window (batching matters: one query costs nearly a full scan).
        k : int

        Returns
        -------
        (distances float32 [n, k], indices int64 [n, k])
        """
        x = np.ascontiguousarray(to_numpy(vectors), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise IndexSetError(f"query vectors have shape {x.shape}; this index set needs [n, {self.dim}]")
        index = self.index(window)
        if not 1 <= k <= index.ntotal:
            raise IndexSetError(f"k must be in [1, {index.ntotal}], not {k}")
        _set_threads(self.omp_threads)
        return index.search(x, k)

    def tie_tolerance(self, window: int, queries: np.ndarray) -> np.ndarray:
        """Per query [n, 1]: how far apart FAISS may report two equal distances.

        FAISS computes ``|q|^2 + |r|^2 - 2 q.r`` in float32 with BLAS: the error grows like
        ``eps * sqrt(dim) * (|q|^2 + |r|^2)`` (measured here up to 7e-5 relative at dim 8,240).
        """
        q2 = (queries.astype(np.float64) ** 2).sum(axis=1, keepdims=True)
        r2 = self.entry(window).max_norm2
        return 16 * np.finfo(np.float32).eps * np.sqrt(self.dim) * (q2 + r2) + 1e-12

    def verify(self, windows: Sequence[int] | None = None) -> list[int]:
        """Re-hash index files against the manifest; returns the windows that fail."""
        bad = []
        for w in windows if windows is not None else map(int, self.manifest["windows"]):
            e = self.entry(w)
            path = self.directory / e.file
            if not path.is_file() or path.stat().st_size != e.size or _file_sha256(path) != e.sha256:
                bad.append(w)
        return bad

    def close(self) -> None:
        """Drop every open index (unmapping it)."""
        if self._cache is not None:
            self._cache.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_cache=None, _pid=None, _lock=None, _gpu_res=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _load_manifest(directory: Path) -> dict[str, Any]:
    try:
        m = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise IndexSetError(f"{directory / MANIFEST} cannot be read ({e})") from None
    if m.get("format_version") != FORMAT_VERSION:
        raise IndexSetError(f"{directory}: index set format {m.get('format_version')} is not supported; rebuild it")
    return m


class _Builder:
    """Encodes one window's masked references in haplotype chunks and writes its index file."""

    def __init__(
        self,
        store: PanelStore,
        embedding: Embedding,
        forward_kwargs: dict[str, Any] | None,
        device: Any,
        batch_rows: int,
        kind: str,
        budget: MemoryBudget | None,
    ) -> None:
        self.store, self.embedding, self.forward_kwargs = store, embedding, forward_kwargs
        self.device = embedding_device(embedding, device)
        self.batch_rows, self.factory, self.budget = batch_rows, _factory(kind), budget
        self.train_rows = 1024

    def _chunks(self, w: int, mask: np.ndarray) -> Iterator[np.ndarray]:
        import torch

        af = self.store.window_af(w)
        with torch.no_grad():  # IndexSet.build holds the layer in eval mode
            for start in range(0, self.store.n_haplotypes, self.batch_rows):
                rows = np.arange(start, min(start + self.batch_rows, self.store.n_haplotypes))
                tokens = self.store.window_tokens(w, rows=rows, mask=mask)
                out = embed(self.embedding, tokens, af, forward_kwargs=self.forward_kwargs, device=self.device)
                yield out.reshape(len(rows), -1).float().cpu().numpy()

    def write(self, w: int, mask: np.ndarray, path: Path) -> dict[str, Any]:
        faiss = _faiss()
        chunks = self._chunks(w, mask)
        first = next(chunks)
        dim = first.shape[1]
        try:
            index = faiss.index_factory(dim, self.factory, faiss.METRIC_L2)
        except RuntimeError as e:
            raise IndexSetError(f"FAISS cannot make a {self.factory!r} index of dimension {dim}: {e}") from None
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if not index.is_trained:
            # Train on the first train_rows haplotypes (trainable kinds are built in RAM anyway).
            while len(first) < min(self.train_rows, self.store.n_haplotypes):
                first = np.concatenate([first, next(chunks)])
            try:
                index.train(first)
            except RuntimeError as e:
                raise IndexSetError(f"training the {self.factory!r} index of window {w} failed: {e}") from None
        # IndexFlatCodes kinds (flat, SQ, PQ) can be streamed to disk and mapped zero-copy.
        mappable = isinstance(faiss.downcast_index(index), faiss.IndexFlatCodes)
        template = _CodesTemplate(index, first) if mappable else None
        n = self.store.n_haplotypes
        max_norm2 = 0.0  # the largest squared norm: bounds FAISS's rounding of distances
        if template is not None:
            digest = hashlib.sha256()  # hashed as written: reading a 1.6 GB file back costs ~1 s
            with open(tmp, "wb") as f:

                def put(data: bytes | np.ndarray) -> None:
                    f.write(data)  # arrays go out through the buffer protocol, without a copy
                    digest.update(data)

                put(template.header_for(n))
                for x in _chain(first, chunks):
                    max_norm2 = max(max_norm2, _max_norm2(x))
                    codes = index.sa_encode(x)
                    put(codes)
                    # Batches are large, short-lived and of varying sizes: without a trim glibc
                    # keeps the freed memory (measured: +124 MB over a 214 MB index build).
                    malloc_trim()
                put(template.trailer)
                f.flush()
                os.fsync(f.fileno())
            sha256 = digest.hexdigest()
            _check_streamed(tmp, n, dim, codes[-1:], index)
        else:
            for x in _chain(first, chunks):
                max_norm2 = max(max_norm2, _max_norm2(x))
                index.add(x)
            faiss.write_index(index, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            sha256 = _file_sha256(tmp)
        os.replace(tmp, path)  # never truncate a file a reader may have mapped
        _fsync_dir(path.parent)
        return {
            "file": path.name,
            "n_vectors": n,
            "dim": dim,
            "mappable": mappable,
            "size": path.stat().st_size,
            "sha256": sha256,
            "head_sha256": _head_sha256(path),
            "max_norm2": max_norm2,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


def _check_streamed(path: Path, n: int, dim: int, last_code: np.ndarray, index: Any) -> None:
    """Read a streamed file back (mapped): its count, dimension and last vector must be right."""
    faiss = _faiss()
    back = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    ok = back.ntotal == n and back.d == dim
    if ok:
        ok = bool(np.array_equal(back.reconstruct(n - 1), index.sa_decode(last_code)[0]))
    del back
    if not ok:
        path.unlink(missing_ok=True)
        raise IndexSetError(f"internal error: the streamed index file {path.name} does not read back correctly")


def _max_norm2(x: np.ndarray) -> float:
    return float(np.einsum("ij,ij->i", x, x, dtype=np.float64).max())


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
