"""The four retrieval designs of ``benchmarks.designs``, one class each, and the mapped index's extras.

A design runs in a worker process on one panel (:class:`Bench`); the runner
(:func:`benchmarks.designs.measure`) drives it window by window through the :class:`Design` methods,
so what differs between designs lives here and nowhere else.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from .common import dir_bytes, drop_page_cache

REAL_WINDOWS = 331
REAL_HAPLOTYPES = 2008
SITES_PER_WINDOW = 455
MAX_SEQ_LEN = 1030
BATCH_SAMPLES = 24
MAPPED_EXTRAS = "faiss-extras"  # the worker job of mapped_index_extras


@contextlib.contextmanager
def clock(times: dict[str, float], key: str) -> Iterator[None]:
    """Add the block's wall time to ``times[key]``."""
    t = time.perf_counter()
    yield
    times[key] = times.get(key, 0.0) + time.perf_counter() - t


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def encode(layer: Any, tokens: np.ndarray, af: np.ndarray, grad: bool, batch: int = 64) -> Any:
    """Embed ``tokens`` in batches: a float32 [n, L*D] array, or with ``grad`` the [n, L, D] tensor."""
    import torch

    from vcfstore.retrieval.embedding import embed

    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        parts = [embed(layer, tokens[s : s + batch], af) for s in range(0, len(tokens), batch)]
    out = torch.cat(parts)
    return out if grad else out.reshape(len(tokens), -1).numpy()


@dataclass
class Bench:
    """What every design works on: the two stores, the embedding layer, this epoch's masks, a scratch folder."""

    cfg: dict[str, Any]
    vs: ModuleType
    ref: Any
    tgt: Any
    layer: Any
    masks: Any
    work: Path

    @classmethod
    def open(cls, cfg: dict[str, Any]) -> Bench:
        """Open the stores of ``cfg`` and seed the layer, so that every design embeds alike."""
        import torch

        import vcfstore as vs
        from vcfstore.retrieval.layers import PositionwiseEmbedding

        torch.set_num_threads(cfg["threads"])
        ref, tgt = vs.open_store(cfg["reference"]), vs.open_store(cfg["targets"])
        torch.manual_seed(0)
        layer = PositionwiseEmbedding(d_model=cfg["d"], max_len=ref.max_seq_len)
        layer.eval()
        masks = vs.MaskSchedule(1).at(ref, epoch=0, rate=0.3)
        return cls(cfg, vs, ref, tgt, layer, masks, Path(cfg["work"]))

    def queries(self, w: int) -> np.ndarray:
        """The batch's queries: the first target samples' haplotypes, masked as the reference is."""
        return self.tgt.window_tokens(w, rows=np.arange(2 * BATCH_SAMPLES), mask=self.masks[w])

    def encode_queries(self, w: int) -> np.ndarray:
        return encode(self.layer, self.queries(w), self.ref.window_af(w), False)


class Design:
    """One retrieval design.

    The runner calls :meth:`setup` once, :meth:`enter_window` when it moves to a window, then per K
    a cold batch (page cache dropped, then :meth:`go_cold`) and a warm one through :meth:`batch`.
    State building adds its time to ``times["build"]``; a batch adds each part's time to ``parts``.
    ``report`` holds the sizes the result file records.
    """

    name: ClassVar[str]
    label: ClassVar[str]  # the README table's name
    color: ClassVar[str]  # the plot's colour
    all_windows: ClassVar[bool] = True  # measured on every window at reduced D (phase B), not extrapolated
    rebuilds_each_epoch: ClassVar[bool] = False  # its index depends on the epoch's masks, so every epoch rebuilds it
    extras_job: ClassVar[str | None] = None  # a worker job whose extra figures join this design's rows

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.report: dict[str, Any] = {"disk_bytes": 0}

    def setup(self, times: dict[str, float]) -> None:
        """State that covers every window, built before the first."""

    def enter_window(self, w: int, mask: np.ndarray, af: np.ndarray, times: dict[str, float]) -> None:
        """State built when training moves to window ``w``."""

    def go_cold(self) -> None:
        """Forget what a window switch forgets (the runner drops the page cache itself)."""

    def search(self, w: int, q: np.ndarray, af: np.ndarray, k: int, parts: dict[str, float]) -> tuple[Any, Any]:
        """Distances and indices of the K nearest reference haplotypes of each query."""
        raise NotImplementedError

    def read_rows(self, w: int, rows: np.ndarray) -> np.ndarray:
        """Complete tokens of the reference haplotypes ``rows`` of window ``w``."""
        raise NotImplementedError

    def fetch(self, w: int, i: np.ndarray, af: np.ndarray, parts: dict[str, float]) -> None:
        """Give the model the retrieved haplotypes: their tokens encoded with gradients, as training does."""
        uniq = np.unique(i)
        with clock(parts, "read"):
            toks = self.read_rows(w, uniq)
        with clock(parts, "encode"):
            encode(self.bench.layer, toks, af, True)

    def batch(self, w: int, q: np.ndarray, af: np.ndarray, k: int, parts: dict[str, float]) -> tuple[Any, Any]:
        """One training batch's retrieval: search, then fetch; returns the search's distances and indices."""
        d, i = self.search(w, q, af, k, parts)
        self.fetch(w, i, af, parts)
        return d, i

    def neighbours(self, d: Any, i: Any) -> dict[str, Any]:
        """What the agreement check needs of a batch's result."""
        return {"d": np.asarray(d).tolist(), "i": np.asarray(i).tolist()}


class _FlatIndexInRam(Design):
    """Designs 1 and 2: queries encoded, then searched in a FAISS flat index held in RAM."""

    def flat_index(self, parts: dict[str, float]) -> Any:
        raise NotImplementedError

    def search(self, w: int, q: np.ndarray, af: np.ndarray, k: int, parts: dict[str, float]) -> tuple[Any, Any]:
        index = self.flat_index(parts)
        with clock(parts, "encode_queries"):
            self.last_queries = encode(self.bench.layer, q, af, False)
        with clock(parts, "search"):
            return index.search(self.last_queries, k)


class InRamOriginal(_FlatIndexInRam):
    """Design 1, the original: masked and complete embeddings plus a flat index per window, all in RAM."""

    name = "ram"
    label = "1. in-RAM (original)"
    color = "#c44"
    all_windows = False
    rebuilds_each_epoch = True

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.windows: dict[int, dict[str, Any]] = {}  # every window's state stays, as in the original

    def enter_window(self, w: int, mask: np.ndarray, af: np.ndarray, times: dict[str, float]) -> None:
        import faiss

        b = self.bench
        with clock(times, "build"):
            masked = encode(b.layer, b.ref.window_tokens(w, mask=mask), af, False)
            complete = encode(b.layer, b.ref.window_tokens(w), af, False)
            index = faiss.IndexFlatL2(masked.shape[1])
            index.add(masked)  # FAISS copies: masked + complete + index = three copies of a window
            self.windows[w] = {"masked": masked, "complete": complete, "index": index}
        self.current = self.windows[w]
        self.report["state_bytes_per_window"] = masked.nbytes * 3

    def flat_index(self, parts: dict[str, float]) -> Any:
        return self.current["index"]

    def fetch(self, w: int, i: np.ndarray, af: np.ndarray, parts: dict[str, float]) -> None:
        with clock(parts, "read"):
            self.current["complete"][i.reshape(-1)].copy()

    def neighbours(self, d: Any, i: Any) -> dict[str, Any]:
        nb = super().neighbours(d, i)
        # FAISS's float32 rounding grows with the vectors' norms: the agreement check's tolerance
        nb["q_norm2"] = (self.last_queries.astype(np.float64) ** 2).sum(1).tolist()
        nb["dim"] = self.last_queries.shape[1]
        return nb


class DiskUnmapped(_FlatIndexInRam):
    """Design 2, the first fix: flat index files read whole into a one-window cache, tokens as int64 in RAM."""

    name = "disk"
    label = "2. disk, unmapped"
    color = "#d93"
    all_windows = False
    rebuilds_each_epoch = True

    def setup(self, times: dict[str, float]) -> None:
        with clock(times, "build"):  # tokens of every window as int64 in RAM, as the first fix kept them
            self.tokens = [self.bench.ref.window_tokens(w) for w in range(self.bench.ref.n_windows)]
        self.report["tokens_in_ram_bytes"] = sum(t.nbytes for t in self.tokens)
        self.index: Any = None

    def enter_window(self, w: int, mask: np.ndarray, af: np.ndarray, times: dict[str, float]) -> None:
        import faiss

        b = self.bench
        self.path = b.work / f"disk_{b.cfg['d']}_{w}.faiss"
        with clock(times, "build"):
            t = self.tokens[w].copy()
            t[:, mask] = 4
            masked = encode(b.layer, t, af, False)
            idx = faiss.IndexFlatL2(masked.shape[1])
            idx.add(masked)
            faiss.write_index(idx, str(self.path))
            del idx, masked
        self.report["disk_bytes"] += self.path.stat().st_size
        self.index = None

    def go_cold(self) -> None:
        self.index = None

    def flat_index(self, parts: dict[str, float]) -> Any:
        if self.index is None:
            import faiss

            with clock(parts, "load"):
                self.index = faiss.read_index(str(self.path))
        return self.index

    def read_rows(self, w: int, rows: np.ndarray) -> np.ndarray:
        return self.tokens[w][rows]


class _VcfstoreRetriever(Design):
    """Designs 3 and 4: a vcfstore Retriever on the Zarr store under a memory budget."""

    def retriever(self, budget: Any, **kwargs: Any) -> Any:
        b = self.bench
        return b.vs.Retriever(b.ref, b.layer, k=max(b.cfg["ks"]), budget=budget, **kwargs)

    def go_cold(self) -> None:
        self.retr.window_cache.cache.clear()

    def search(self, w: int, q: np.ndarray, af: np.ndarray, k: int, parts: dict[str, float]) -> tuple[Any, Any]:
        self.retr.k = k
        with clock(parts, "search"):
            return self.retr.search(w, q)

    def read_rows(self, w: int, rows: np.ndarray) -> np.ndarray:
        return self.retr.window_cache.tokens(w, rows=rows)


class VcfstoreFaissMapped(_VcfstoreRetriever):
    """Design 3: memory-mapped flat index files (IO_FLAG_MMAP_IFC) under a budgeted LRU."""

    name = "faiss"
    label = "3. vcfstore FAISS (mapped)"
    color = "#39c"
    extras_job = MAPPED_EXTRAS

    def setup(self, times: dict[str, float]) -> None:
        from vcfstore.index import IndexSet

        b = self.bench
        with clock(times, "build"):
            built = IndexSet.build(
                b.ref, b.layer, b.work / f"ix_{b.cfg['d']}", b.masks, windows=b.cfg["windows"], progress=False
            )
        budget = b.vs.MemoryBudget(b.cfg["budget"], mapped_limit=b.cfg["mapped_budget"])
        self.iset = IndexSet.open(built.directory, b.ref, budget)
        self.retr = self.retriever(budget, backend="faiss", index_set=self.iset)
        self.report["disk_bytes"] = dir_bytes(self.iset.directory)

    def go_cold(self) -> None:
        super().go_cold()
        self.iset.close()


class VcfstoreExact(_VcfstoreRetriever):
    """Design 4: exact token-space search on the Zarr store, no index files."""

    name = "exact"
    label = "4. vcfstore exact"
    color = "#3a6"

    def setup(self, times: dict[str, float]) -> None:
        self.retr = self.retriever(self.bench.vs.MemoryBudget(self.bench.cfg["budget"]), backend="exact")


DESIGNS: dict[str, type[Design]] = {
    c.name: c for c in (InRamOriginal, DiskUnmapped, VcfstoreFaissMapped, VcfstoreExact)
}


def mapped_index_extras(cfg: dict[str, Any]) -> dict[str, Any]:
    """Advice on the mapping, the bandwidth bound, recall of approximate kinds (first window).

    A job of its own, in a process of its own, so that its memory does not count against design 3.
    """
    from vcfstore.index import IndexSet

    b = Bench.open(cfg)
    w = cfg["windows"][0]
    iset = IndexSet.build(b.ref, b.layer, b.work / f"ix_{cfg['d']}", b.masks, windows=[w], progress=False)
    x = b.encode_queries(w)
    path = iset.directory / iset.entry(w).file
    extras: dict[str, Any] = {"advice_cold_search_s": {}}
    for advice in ("random", "normal", "sequential", "willneed"):
        drop_page_cache(path)
        s = IndexSet.open(iset.directory, b.ref, advice=advice)
        _, t = _timed(lambda s=s: s.search(w, x, 8))
        extras["advice_cold_search_s"][advice] = t
        s.close()
    # The bandwidth bound: one NumPy pass over the same mapped file, cold and warm.
    for phase in ("cold", "warm"):
        if phase == "cold":
            drop_page_cache(path)
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        floats = mm[: len(mm) // 4 * 4].view(np.float32)
        _, t_pass = _timed(lambda floats=floats: float(floats.sum(dtype=np.float64)))
        s = IndexSet.open(iset.directory, b.ref)
        if phase == "cold":
            drop_page_cache(path)
        _, t_search = _timed(lambda s=s: s.search(w, x, 8))
        extras[f"numpy_pass_{phase}_s"] = t_pass
        extras[f"flat_search_{phase}_s"] = t_search
        extras["file_bytes"] = path.stat().st_size
        del mm, floats
        s.close()
    exact_d, _ = iset.search(w, x, 8)
    flat = iset.index(w)
    extras["recall"] = {}
    for kind in cfg["approx_kinds"]:
        d = b.work / f"ix_{cfg['d']}_{kind.replace(',', '_')}"
        s = IndexSet.build(b.ref, b.layer, d, b.masks, kind=kind, windows=[w], progress=False)
        for k in (1, 8):
            _, got = s.search(w, x, k)
            # Tie-aware recall: a returned reference counts when its true distance is within the
            # exact k-th distance (many references tie in token space).
            # (an IVF search can come back short: -1 entries count as misses)
            refs = {int(j): flat.reconstruct_n(int(j), 1)[0].astype(np.float64) for j in np.unique(got) if j >= 0}
            true_d = np.array(
                [
                    [((refs[int(j)] - xi) ** 2).sum() if j >= 0 else np.inf for j in g]
                    for g, xi in zip(got, x, strict=True)
                ]
            )
            kth = exact_d[:, k - 1 : k] * (1 + 1e-4) + 1e-3
            extras["recall"].setdefault(kind, {})[f"recall@{k}"] = float((true_d <= kth).mean())
        extras["recall"][kind]["bytes"] = dir_bytes(d) - (d / "manifest.json").stat().st_size
        shutil.rmtree(d)
    return {"design": MAPPED_EXTRAS, "d": cfg["d"], "extra": extras}


EXTRAS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {MAPPED_EXTRAS: mapped_index_extras}
