"""An index set: per-window FAISS indexes of a panel store, on disk, opened memory-mapped on demand.

An index set is a directory bound to one panel store::

    manifest.json      see :mod:`vcfstore.index.manifest`
    w00000.faiss ...   one FAISS index per window

Opened indexes live in an LRU cache registered with the memory budget (mapped bytes against
its soft mapped figure, RAM-loaded kinds against the hard one, GPU copies against
``gpu_limit``). Nothing FAISS is opened until the first search in a process, so an index set
may be created before DataLoader workers fork; it pickles as its directory and settings.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore._fileio import file_sha256
from vcfstore.errors import IndexSetError, StaleIndexError
from vcfstore.index.builder import IndexBuild, WindowIndexWriter
from vcfstore.index.manifest import MANIFEST, Manifest, WindowEntry, factory_string, pack_mask, verify_index_files
from vcfstore.index.mapping import ADVICE, DEFAULT_ADVICE, MappedIndex, advise_mapping
from vcfstore.index.runtime import faiss, set_search_threads
from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.lru import LruCache
from vcfstore.retrieval.embedding import Embedding, check_pos_stated, embed, embedding_digest, eval_mode, to_numpy
from vcfstore.retrieval.exact_search import top_k
from vcfstore.store.masks import masks_version
from vcfstore.store.reader import PanelStore

# Files whose whole content matched the manifest in this process: {path: ((inode, size, mtime), sha256)}.
_VERIFIED: dict[str, tuple[tuple[int, int, int], str]] = {}


def _file_identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


# Bytes per stored value of the kinds whose size is known before building (vectors x dimension x this).
_VALUE_BYTES = {"Flat": 4.0, "SQfp16": 2.0, "SQ8": 1.0, "SQ4": 0.5}
MAX_WINDOW_INDEX_BYTES = 64 << 30  # one window's index larger than this is refused up front


def _check_room(
    store: PanelStore, embedding: Embedding, kind: str, n_windows: int, directory: Path, **call: Any
) -> None:
    """Refuse, before building anything, index files that could never be written or searched here.

    One window's index of a known kind holds ``n_haplotypes x max_seq_len x D`` values; D comes
    from embedding one row. Other kinds (PQ, IVF-PQ, HNSW, ...) are not sized in advance.
    """
    per_value = _VALUE_BYTES.get(factory_string(kind))
    if per_value is None or n_windows == 0:
        return
    import torch

    with torch.no_grad(), eval_mode(embedding):
        dim = embed(embedding, store.window_tokens(0, rows=np.arange(1)), store.window_af(0), **call).shape[-1]
    per_window = store.n_haplotypes * store.max_seq_len * dim * per_value
    free = shutil.disk_usage(directory).free
    if per_window > MAX_WINDOW_INDEX_BYTES or per_window * n_windows > free:
        raise IndexSetError(
            f"a {kind!r} index of one window needs {store.n_haplotypes:,} haplotypes x {store.max_seq_len} x "
            f"{dim} x {per_value:g} bytes = {_size(per_window)} ({_size(per_window * n_windows)} for {n_windows} "
            f"windows; {_size(free)} free in {directory}, at most {_size(MAX_WINDOW_INDEX_BYTES)} a window): "
            "use backend='exact' (a position-wise layer needs no index) or a compressed FAISS kind (a PQ "
            "factory string: smaller, approximate)"
        )


def _size(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


F32_EPS = float(np.finfo(np.float32).eps)
U64 = 2.0**-53  # float64's unit roundoff


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
        manifest: Manifest,
        budget: MemoryBudget | None,
        *,
        max_open: int | None = None,
        omp_threads: int | None = None,
        advice: str = DEFAULT_ADVICE,
        gpu: bool = False,
        verify_on_open: bool = True,
    ) -> None:
        self.directory, self.store, self.manifest = Path(directory), store, manifest
        self.budget, self.max_open, self.omp_threads = budget, max_open, omp_threads
        if advice not in ADVICE:
            raise IndexSetError(f"advice must be one of {sorted(ADVICE)}, not {advice!r}")
        self.advice, self.gpu, self.verify_on_open = advice, gpu, verify_on_open
        self._cache: LruCache[MappedIndex] | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._gpu_res: tuple[int, Any] | None = None
        self._warned_gpu = False

    # --- metadata --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def dim(self) -> int:
        if self.manifest.dim is None:
            raise IndexSetError(f"{self.directory}: the index set holds no window yet")
        return self.manifest.dim

    def entry(self, w: int) -> WindowEntry:
        """The manifest's record of window ``w``'s index."""
        self.store.window_sites(w)  # a clear error for an unknown window
        e = self.manifest.windows.get(int(w))
        if e is None:
            raise IndexSetError(f"window {w} has no index in {self.directory} (the build did not reach it)")
        return e

    def mask(self, w: int) -> np.ndarray:
        """The token mask window ``w``'s index was built with (bool [max_seq_len])."""
        return self.entry(w).mask(self.store.max_seq_len)

    def stale_windows(
        self,
        *,
        embedding: Embedding | None = None,
        masks: Sequence[np.ndarray] | None = None,
        weights_version: str | None = None,
        forward_kwargs: dict[str, Any] | None = None,
    ) -> list[int]:
        """Windows whose index is missing or was built with other weights, call or masks than these."""
        weights = None
        if embedding is not None or weights_version:
            weights = embedding_digest(embedding, weights_version, forward_kwargs)  # type: ignore[arg-type]
        stale = []
        for w in range(self.store.n_windows):
            e = self.manifest.windows.get(w)
            if e is None or (weights is not None and e.weights != weights):
                stale.append(w)
            elif masks is not None and e.mask_bits != pack_mask(masks[w]):
                stale.append(w)
        return stale

    def check_fresh(self, w: int, *, mask: np.ndarray | None = None, weights: str | None = None) -> None:
        """Raise :class:`StaleIndexError` if window ``w``'s index does not match ``mask``/``weights``.

        ``weights`` is an :func:`~vcfstore.retrieval.embedding_digest` (the layer's weights and
        the keyword arguments it is called with).
        """
        e = self.entry(w)
        if mask is not None and e.mask_bits != pack_mask(mask):
            raise StaleIndexError(
                f"window {w}: the query is masked differently from the mask its index was built with "
                f"({e.mask_version}); rebuild the index set for these masks (IndexSet.rebuild) or use backend='exact'"
            )
        if weights is not None and e.weights != weights:
            hint = (
                " (it was built with weights_version; pass the same weights_version)"
                if e.weights.startswith("user:") != weights.startswith("user:")
                else ""
            )
            raise StaleIndexError(
                f"window {w}: the index was built with other embedding weights, another layer or other "
                f"forward_kwargs ({e.weights}, not {weights}){hint}; rebuild it (IndexSet.rebuild) "
                "or use backend='exact'"
            )

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
        from tqdm.auto import tqdm

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if len(masks) != store.n_windows:
            raise IndexSetError(f"masks has {len(masks)} entries; the store has {store.n_windows} windows")
        manifest = Manifest.load(directory) if (directory / MANIFEST).exists() else None
        if manifest is not None and manifest.store != store.identity:
            raise IndexSetError(f"{directory} holds indexes of another store; use another directory")
        if manifest is not None and manifest.kind != kind:
            raise IndexSetError(f"{directory} holds {manifest.kind!r} indexes, not {kind!r}; use another directory")
        if manifest is None:
            manifest = Manifest(store=store.identity, kind=kind, factory=factory_string(kind))
        todo = list(range(store.n_windows)) if windows is None else [store.check_window(w) for w in windows]
        check_pos_stated(embedding, forward_kwargs, store, device)
        writer = WindowIndexWriter(store, embedding, forward_kwargs, device, batch_rows, kind, budget)
        weights = embedding_digest(embedding, weights_version, forward_kwargs)
        run = IndexBuild(directory, manifest, writer, masks, weights, masks_version(masks))
        pending = [w for w in todo if not run.is_valid(w)]
        _check_room(store, embedding, kind, len(pending), directory, forward_kwargs=forward_kwargs, device=device)
        bar = tqdm(total=len(todo), unit=" windows", desc=f"indexing {directory.name}", disable=not progress)
        bar.update(len(todo) - len(pending))

        def done(written: int) -> None:
            bar.set_postfix_str(f"{written / 1e6:,.0f} MB written")
            bar.update(1)

        # Eval mode once for the whole build: threads toggling it per window would race.
        with eval_mode(embedding):
            try:
                run.run(pending, workers, done)
            except OSError as e:  # disk full, read-only, permissions: nothing written is lost
                raise IndexSetError(
                    f"{directory}: writing the index set failed ({e.strerror or e}); fix the cause and run the "
                    "same build again to resume (finished windows are kept)"
                ) from None
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
        stale = self.stale_windows(
            embedding=embedding, masks=masks, weights_version=weights_version, forward_kwargs=forward_kwargs
        )
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
        verify_on_open: bool = True,
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
        verify_on_open : bool
            Check each index file's SHA-256 against the manifest the first time this process opens
            it (about 0.9 s for a 1.59 GB window here), so a damaged body never answers a search.
            False skips it (size and identity are still checked): only for files you trust.
        """
        directory = Path(directory)
        if not (directory / MANIFEST).is_file():
            raise IndexSetError(f"{directory}: no index set here (no {MANIFEST})")
        manifest = Manifest.load(directory)
        if manifest.store != store.identity:
            raise IndexSetError(f"{directory}: these indexes were built for another store (identity differs)")
        return cls(
            directory,
            store,
            manifest,
            budget,
            max_open=max_open,
            omp_threads=omp_threads,
            advice=advice,
            gpu=gpu,
            verify_on_open=verify_on_open,
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
        identity = _file_identity(path)
        if self.verify_on_open and _VERIFIED.get(str(path)) != (identity, e.sha256):
            # The whole file, once per process and file identity: a damaged body must never
            # answer a search (1.8 GB/s here: 0.9 s for a 1.59 GB window at D = 192).
            if file_sha256(path) != e.sha256:
                raise IndexSetError(
                    f"window {w}: index file {path.name} is corrupt (its checksum does not match the manifest); "
                    "run the build again to repair it"
                )
            _VERIFIED[str(path)] = (identity, e.sha256)
        mappable = bool(self.manifest.mappable)
        on_gpu = self._use_gpu()
        cache = self._index_cache()
        what = f"opening window {w}'s index"
        if on_gpu:
            cache.admit(what, gpu=size)  # the CPU side is only mapped, and dropped after the copy
        else:
            cache.admit(what, anon=0 if mappable else size, mapped=size if mappable else 0)
        flags = faiss().IO_FLAG_MMAP_IFC if mappable else 0
        try:
            raw = faiss().read_index(str(path), flags)
        except RuntimeError as err:
            raise IndexSetError(f"window {w}: index file {path.name} is corrupt ({str(err).splitlines()[0]})") from None
        if _file_identity(path) != identity:  # replaced while it was being checked and opened
            raise IndexSetError(f"window {w}: index file {path.name} changed while it was opened; open it again")
        if raw.d != e.dim or raw.ntotal != e.n_vectors:
            raise IndexSetError(
                f"window {w}: index file {path.name} holds {raw.ntotal} vectors of dimension {raw.d}, "
                f"the manifest says {e.n_vectors} of {e.dim}"
            )
        if on_gpu:
            return MappedIndex(faiss().index_cpu_to_gpu(self._gpu_resources(), 0, raw), path, False), {"gpu": size}
        if mappable:
            advise_mapping(path, self.advice)
        return MappedIndex(raw, path, mappable), {"anon": 0 if mappable else size, "mapped": size if mappable else 0}

    def _use_gpu(self) -> bool:
        """Search on the GPU: asked for, and faiss-gpu sees a CUDA device (else the CPU, with a warning)."""
        if not self.gpu:
            return False
        module = faiss()
        if hasattr(module, "StandardGpuResources") and module.get_num_gpus() > 0:
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
            self._gpu_res = (os.getpid(), faiss().StandardGpuResources())
        return self._gpu_res[1]

    # --- searching -------------------------------------------------------------------------
    def search(self, window: int, vectors: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed haplotypes of each query vector in ``window``'s index, as FAISS ranks them.

        FAISS's float32 distances carry rounding errors up to :meth:`error_bound` (far more than
        one site's step with real layers), so its order among close distances is not exact;
        :meth:`search_exact` is.

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
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= index.ntotal:
            raise IndexSetError(f"k must be in [1, {index.ntotal}], not {k!r}")
        set_search_threads(self.omp_threads)
        return index.search(x, int(k))

    def error_bound(self, window: int, queries: np.ndarray) -> np.ndarray:
        """Per query [n, 1]: how far FAISS's float32 distance may lie from the exact one.

        FAISS computes ``|q|^2 + |r|^2 - 2 q.r`` (``sum (q - r)^2`` for a few queries) in float32
        over ``dim`` terms. Its blocked sums round like a random walk, ``sqrt(dim) u`` relative
        to the magnitudes summed, each at most ``|q|^2 + |r|^2``; the bound takes 16 times that
        (the worst case, ``dim u``, would make every search a full scan). Measured on
        1000 Genomes windows with VCF-Bert's layer (D = 192 and 384): FAISS's errors stayed below
        1/100 of this bound. It sizes the candidate net of :meth:`search_exact`; it never decides a
        ranking.
        """
        q2 = (np.asarray(queries, dtype=np.float64) ** 2).sum(axis=1, keepdims=True)
        r2 = self.entry(window).max_norm2
        return 16 * F32_EPS * np.sqrt(self.dim) * (q2 + r2) + 1e-12

    def tie_tolerance(self, window: int, queries: np.ndarray) -> np.ndarray:
        """Deprecated name of :meth:`error_bound` (it is an error bound, not a tie rule)."""
        warnings.warn("IndexSet.tie_tolerance is deprecated: use error_bound", DeprecationWarning, stacklevel=2)
        return self.error_bound(window, queries)

    def vectors(self, window: int, ids: np.ndarray) -> np.ndarray:
        """The vectors window ``window``'s index holds for haplotypes ``ids`` (decoded): float32 [n, dim]."""
        ids = np.asarray(ids, dtype=np.int64)
        index = self.index(window)
        if ids.size and (ids.min() < 0 or ids.max() >= index.ntotal):
            raise IndexSetError(f"haplotype ids must lie in [0, {index.ntotal}); got {ids.min()}..{ids.max()}")
        order = np.argsort(ids, kind="stable")
        runs = np.split(ids[order], np.flatnonzero(np.diff(ids[order]) != 1) + 1) if ids.size else []
        out = np.empty((len(ids), index.d), dtype=np.float32)
        at = 0
        for run in runs:  # contiguous runs of ids: one call each
            try:
                out[order[at : at + len(run)]] = index.reconstruct_n(int(run[0]), len(run))
            except RuntimeError as e:
                raise IndexSetError(
                    f"a {self.kind!r} index cannot return its vectors ({str(e).splitlines()[0]}); exact ranking "
                    "needs an exhaustive kind: flat, fp16, SQ8 or PQ"
                ) from None
            at += len(run)
        return out

    def search_exact(self, window: int, vectors: Any, k: int, *, first_net: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """The exact ``k`` nearest indexed vectors of each query: FAISS's candidates, ranked exactly.

        Ranking. Candidates are ranked by their squared L2 distance to the stored vectors,
        computed in float64 from the float32 values: each difference is exact (or rounds by u
        relative, u = 2^-53, for values 2^28 times apart), each square rounds by at most 3 u
        relative, and NumPy's pairwise sums (of blocks of 8,192 values, then of the block sums)
        add at most ``(log2(dim) + 31) u`` of the total. Two computations of one exact distance
        ``d`` thus differ by at most ``beta d``, ``beta = 2 (log2(dim) + 35) u`` (about 1e-14):
        distances that close tie, and ties go to the lowest index. Nothing wider is merged.

        Candidates. FAISS's float32 distances ``d~`` lie within ``e`` (:meth:`error_bound`) of the
        exact ones, so the exact k-th distance is at most ``d~_k + e`` and every reference among
        (or tied with) the exact k nearest has ``d~ <= cut = d~_k + 2 e + n beta (d~_k + e)``
        (a tie chain spans at most ``n`` steps of ``beta d``). The candidates are the references
        with ``d~ <= cut``; a net of FAISS's ``k + first_net`` nearest that ends below ``cut`` is
        widened to every reference (a second scan). For flat indexes the stored vectors are the
        embeddings themselves; for lossy kinds (fp16, SQ8, PQ) the ranking is exact for their
        decoded vectors; kinds that do not scan every vector (IVF, HNSW) may miss candidates.
        Cost: one float64 pass over each query-candidate pair (about 0.6 ms per pair on two cores at
        dim = 1030 x 192), on top of FAISS's scan.

        Returns
        -------
        (distances float64 [n, k], indices int64 [n, k])
        """
        x = np.ascontiguousarray(to_numpy(vectors), dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise IndexSetError(f"query vectors have shape {x.shape}; this index set needs [n, {self.dim}]")
        if not np.isfinite(x).all():
            raise IndexSetError("query vectors hold NaN or infinite values")
        n_ref = self.index(window).ntotal
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_ref:
            raise IndexSetError(f"k must be in [1, {n_ref}], not {k!r}")
        beta = 2 * (np.log2(self.dim) + 35) * U64
        e = self.error_bound(window, x)[:, 0]
        m = min(n_ref, k + first_net)
        d, i = self.search(window, x, m)
        nets = [(d[j], i[j]) for j in range(len(x))]
        cut = d[:, k - 1] + 2 * e + n_ref * beta * (d[:, k - 1] + e)
        short = np.flatnonzero(~(cut < d[:, m - 1])) if m < n_ref else np.zeros(0, np.int64)
        if len(short):
            d2, i2 = self.search(window, x[short], n_ref)
            for s, q in enumerate(short.tolist()):
                nets[q] = (d2[s], i2[s])
        rows = []
        for j, (dj, ij) in enumerate(nets):
            if (ij < 0).any():
                raise IndexSetError(f"window {window}: FAISS returned no neighbour (label -1) for query {j}")
            rows.append(np.sort(ij[dj <= cut[j]]))  # index order: top_k keeps it among ties
        row = np.concatenate(rows)
        exact = self._exact_distances(window, x, np.repeat(np.arange(len(x)), [len(r) for r in rows]), row)
        out_d = np.empty((len(x), k))
        out_i = np.empty((len(x), k), dtype=np.int64)
        at = 0
        for j, rj in enumerate(rows):
            dj = exact[at : at + len(rj)]
            at += len(rj)
            _, pos = top_k(dj[None], k, beta * dj.max())
            out_d[j], out_i[j] = dj[pos[0]], rj[pos[0]]
        return out_d, out_i

    def _exact_distances(
        self, window: int, x: np.ndarray, owner: np.ndarray, row: np.ndarray, *, pairs: int = 64, block: int = 8192
    ) -> np.ndarray:
        """float64 ``||x[owner] - v[row]||^2`` per pair, in cache-sized blocks of ``pairs`` x ``block`` values.

        Each block's squares are added by NumPy's pairwise sum, then the block sums by another.
        """
        out = np.empty(len(row))
        order = np.argsort(row, kind="stable")  # pairs grouped by stored vector: each is read about once
        n_blocks = -(-x.shape[1] // block)
        buf = np.empty((pairs, block))
        for s in range(0, len(order), pairs):
            p = order[s : s + pairs]
            ids, loc = np.unique(row[p], return_inverse=True)
            vecs, own = self.vectors(window, ids), owner[p]
            part = np.empty((len(p), n_blocks))
            for b in range(n_blocks):
                cols = slice(b * block, min(x.shape[1], (b + 1) * block))
                diff = buf[: len(p), : cols.stop - cols.start]
                np.subtract(vecs[loc, cols], x[own, cols], out=diff, dtype=np.float64)  # exact
                np.square(diff, out=diff)
                part[:, b] = diff.sum(axis=1)
            out[p] = part.sum(axis=1)
        return out

    def verify(self, windows: Sequence[int] | None = None) -> list[int]:
        """Re-hash index files against the manifest; returns the windows that fail."""
        for w in windows or ():
            self.entry(w)  # a clear error for a window without an index
        return verify_index_files(self.directory, self.manifest, windows)

    def cache_stats(self) -> dict[str, Any]:
        """This process's cache of open indexes: entries, hits, misses and bytes by kind."""
        return self._index_cache().stats()

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
