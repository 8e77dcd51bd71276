"""Building an index set: encode each window's masked references in batches, write its file.

Flat, SQ and PQ kinds are streamed (:mod:`vcfstore.index.codes`): peak memory is one batch of
embeddings, whatever the panel. Other kinds (IVF, HNSW) are built in RAM and written. Every
file is written to a temporary name, fsynced and renamed over the old one, and the manifest is
rewritten after every window, so a killed build resumes with the windows it had finished.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore._fileio import file_sha256, remove_stale_temps, replace_durably, temp_path
from vcfstore._lock import WriterLock
from vcfstore.errors import IndexSetError
from vcfstore.index.codes import CodesTemplate, check_streamed
from vcfstore.index.manifest import (
    HEAD_BYTES,
    MANIFEST,
    Manifest,
    WindowEntry,
    factory_string,
    file_intact,
    pack_mask,
    window_file,
)
from vcfstore.index.runtime import faiss
from vcfstore.memory.budget import MemoryBudget, malloc_trim
from vcfstore.retrieval.embedding import Embedding, embed, embedding_device
from vcfstore.store.reader import PanelStore


class WindowIndexWriter:
    """Encodes one window's masked references in haplotype batches and writes its index file."""

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
        self.batch_rows, self.factory, self.budget = batch_rows, factory_string(kind), budget
        self.train_rows = 1024

    def _batches(self, w: int, mask: np.ndarray) -> Iterator[np.ndarray]:
        import torch

        af = self.store.window_af(w)
        for start in range(0, self.store.n_haplotypes, self.batch_rows):
            rows = np.arange(start, min(start + self.batch_rows, self.store.n_haplotypes))
            tokens = self.store.window_tokens(w, rows=rows, mask=mask)
            # no_grad around each call, never across a yield: a suspended or abandoned generator
            # would leave the caller's thread without gradients (the build holds the layer in eval mode)
            with torch.no_grad():
                out = embed(self.embedding, tokens, af, forward_kwargs=self.forward_kwargs, device=self.device)
            yield out.reshape(len(rows), -1).float().cpu().numpy()

    def write(self, w: int, mask: np.ndarray, path: Path) -> tuple[dict[str, Any], bool]:
        """Write window ``w``'s index to ``path``; returns its manifest fields and whether it maps."""
        batches = self._batches(w, mask)
        first = next(batches)
        dim = first.shape[1]
        try:
            index = faiss().index_factory(dim, self.factory, faiss().METRIC_L2)
        except RuntimeError as e:
            raise IndexSetError(f"FAISS cannot make a {self.factory!r} index of dimension {dim}: {e}") from None
        if not index.is_trained:
            # Train on the first train_rows haplotypes (trainable kinds are built in RAM anyway).
            while len(first) < min(self.train_rows, self.store.n_haplotypes):
                first = np.concatenate([first, next(batches)])
            try:
                index.train(first)
            except RuntimeError as e:
                raise IndexSetError(f"training the {self.factory!r} index of window {w} failed: {e}") from None
        # IndexFlatCodes kinds (flat, SQ, PQ) can be streamed to disk and mapped zero-copy.
        mappable = isinstance(faiss().downcast_index(index), faiss().IndexFlatCodes)
        tmp = temp_path(path)
        rows = _chain(first, batches)
        try:
            if mappable:
                sha256, max_norm2 = self._stream(index, CodesTemplate(index, first), rows, tmp, dim)
            else:
                sha256, max_norm2 = self._in_ram(index, rows, tmp)
            replace_durably(tmp, path)  # never truncate a file a reader may have mapped
        except BaseException:
            tmp.unlink(missing_ok=True)  # a half-written file (disk full, killed thread) is of no use
            raise
        entry = {
            "file": path.name,
            "n_vectors": self.store.n_haplotypes,
            "dim": dim,
            "size": path.stat().st_size,
            "sha256": sha256,
            "head_sha256": file_sha256(path, limit=HEAD_BYTES),
            "max_norm2": max_norm2,
            "built": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        return entry, mappable

    def _stream(
        self, index: Any, template: CodesTemplate, rows: Iterator[np.ndarray], tmp: Path, dim: int
    ) -> tuple[str, float]:
        n = self.store.n_haplotypes
        max_norm2 = 0.0  # the largest squared norm: bounds FAISS's rounding of distances
        digest = hashlib.sha256()  # hashed as written: reading a 1.6 GB file back costs ~1 s
        codes = np.zeros((0, 0), np.uint8)
        with open(tmp, "wb") as f:
            header = template.header_for(n)
            f.write(header)
            digest.update(header)
            for x in rows:
                max_norm2 = max(max_norm2, _max_norm2(x))
                codes = index.sa_encode(x)
                f.write(codes)  # through the buffer protocol, without a copy
                digest.update(codes)
                # Batches are large, short-lived and of varying sizes: without a trim glibc keeps
                # the freed memory (measured: +124 MB over a 214 MB index build).
                malloc_trim()
            f.write(template.trailer)
            digest.update(template.trailer)
            f.flush()
            os.fsync(f.fileno())
        check_streamed(tmp, n, dim, codes[-1:], index)
        return digest.hexdigest(), max_norm2

    @staticmethod
    def _in_ram(index: Any, rows: Iterator[np.ndarray], tmp: Path) -> tuple[str, float]:
        max_norm2 = 0.0
        for x in rows:
            max_norm2 = max(max_norm2, _max_norm2(x))
            index.add(x)
        faiss().write_index(index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        return file_sha256(tmp), max_norm2


class IndexBuild:
    """One run of :meth:`IndexSet.build <vcfstore.index.IndexSet.build>`: the windows to write, and the manifest.

    Windows are written in any order (``workers`` threads); the manifest is updated and saved
    under a lock after each one.
    """

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        writer: WindowIndexWriter,
        masks: Sequence[np.ndarray],
        weights: str,
        mask_version: str,
    ) -> None:
        self.directory, self.manifest, self.writer = directory, manifest, writer
        self.masks, self.weights, self.mask_version = masks, weights, mask_version
        self._lock = threading.Lock()
        self.written_bytes = 0

    def is_valid(self, w: int) -> bool:
        """Window ``w`` was written by an earlier (perhaps killed) build with these inputs, and is intact.

        The whole file is re-hashed (1.8 GB/s here), so re-running a build repairs a damaged
        window instead of keeping it.
        """
        e = self.manifest.windows.get(w)
        if e is None or e.weights != self.weights or e.mask_bits != pack_mask(self.masks[w]):
            return False
        return file_intact(self.directory, e)

    def write_window(self, w: int, on_done: Callable[[int], None] | None = None) -> None:
        """Write window ``w`` (unless another process holds it) and record it in the manifest."""
        mask = np.asarray(self.masks[w], dtype=bool)
        # One writer per window: several processes may build disjoint windows of one set (a
        # cluster job array); two that pick the same window do not both write it.
        with WriterLock(self.directory / f".{window_file(w)}.lock", "building this window", IndexSetError):
            fields, mappable = self.writer.write(w, mask, self.directory / window_file(w))
        entry = WindowEntry(
            window=w, mask_version=self.mask_version, mask_bits=pack_mask(mask), weights=self.weights, **fields
        )
        with self._lock:
            self.manifest.dim, self.manifest.mappable = entry.dim, mappable
            self.manifest.windows[w] = entry
            self._merge_and_save()
            self.written_bytes += entry.size
            if on_done is not None:
                on_done(self.written_bytes)

    def _merge_and_save(self) -> None:
        """Rewrite the manifest atomically, keeping windows other processes wrote meanwhile."""
        # Held for a moment: processes that build windows of one set together take turns here.
        with WriterLock(self.directory / f".{MANIFEST}.lock", "updating the manifest", IndexSetError, wait=60):
            if (self.directory / MANIFEST).exists():
                on_disk = Manifest.load(self.directory)
                if on_disk.store == self.manifest.store and on_disk.kind == self.manifest.kind:
                    for w, e in on_disk.windows.items():
                        self.manifest.windows.setdefault(w, e)
            self.manifest.save(self.directory)

    def run(self, pending: Sequence[int], workers: int, on_done: Callable[[int], None] | None = None) -> None:
        remove_stale_temps(self.directory)  # what killed or disk-full builds left behind
        if workers <= 1 or len(pending) <= 1:
            for w in pending:
                self.write_window(w, on_done)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="vcfstore-index") as pool:
            list(pool.map(lambda w: self.write_window(w, on_done), pending))


def _max_norm2(x: np.ndarray) -> float:
    return float(np.einsum("ij,ij->i", x, x, dtype=np.float64).max())


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
