"""The memory budget: a RAM ceiling that holds, and a clear error instead of an OOM kill.

What is counted, and why:

* **Anonymous memory** of the process (RssAnon: heap, NumPy and torch tensors, FAISS indexes
  loaded into RAM) is what the kernel cannot reclaim without swap, so it is what OOM-kills a
  run. It is budgeted *hard*: measured from ``/proc/self/statm`` (about 1 us a read) before each
  admission, against the limit.
* **Mapped file bytes** (memory-mapped indexes, Zarr chunks in the page cache) show in RSS but
  are reclaimable clean pages. They are budgeted *softly*: the consumers' mapped bytes are kept
  under ``mapped_limit`` by evicting, never by refusing.
* **GPU bytes** (indexes copied to a CUDA device) are budgeted *hard* against ``gpu_limit``, from
  what the consumers hold (FAISS's device memory is invisible to the process's counters).

Thresholds follow Dask's worker memory management: above ``soft_fraction`` of the limit,
admissions first evict least-recently-used entries from registered consumers; an admission
that would still cross the limit when nothing is left to evict raises
:class:`MemoryBudgetExceeded`, a ``MemoryError`` whose message names the limit, the usage by
consumer, the request and what to change.

DataLoader workers: the limit is the whole process tree's. :meth:`MemoryBudget.split` (or
:meth:`~MemoryBudget.worker_init_fn` / :meth:`~MemoryBudget.dataloader_kwargs`, which call it)
gives the main process ``main_share`` of the limit at once and each of the ``n`` workers
``(1 - main_share) / n`` when it starts (``n`` from ``torch.utils.data.get_worker_info``), so
the shares add up to the limit whatever the start method and however often workers are
re-created; a budget handed to workers without a split is split equally, the main process
taking ``1 / (n + 1)`` once a worker has reported ``n``. Each process measures only itself: a
worker as proportional set size (``Pss_Anon`` from ``/proc/self/smaps_rollup``, sampled at a
low rate), so pages it shares copy-on-write with the main process count as a fraction, and the
main process as RssAnon, which counts them whole: the measured figures add up to at least the
tree's ``Pss_Anon``. A worker whose share cannot hold what it already uses plus what its
dataset declares it needs (``dataset.budget_needs()``: reading one window) is refused when it
starts, with the figures. The main process also reads the tree's summed ``Pss_Anon`` every two
seconds and evicts its own caches while the tree is above the soft level. GPU memory belongs to
the main process: workers get no share of ``gpu_limit``.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import multiprocessing
import os
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from vcfstore.errors import ArgumentError, MemoryBudgetExceeded
from vcfstore.memory.limits import Limit, effective_machine_limit, parse_size
from vcfstore.memory.meters import PeakSampler, PssMeter, StatmMeter, TreeSample, tree_pss_anon

DEFAULT_LIMIT = "11GB"
MEMORY_KINDS = ("anon", "mapped", "gpu")

# Monotonic use counter shared by every cache of the process: LRU order across consumers.
_TICK = itertools.count()
_last_tick = -1  # the latest value handed out: the entry a caller is working with right now
# Registration order of consumers (a counter of its own, so registering is not a use).
_REGISTERED = itertools.count()
# The share of each budget (by uid) in DataLoader worker processes: (pid, share), set when the
# worker starts. The pid keeps a process forked from a worker from taking the entry as its own.
_PROCESS_SHARE: dict[str, tuple[int, float]] = {}
# DataLoader options that torch refuses without workers.
_WORKER_OPTIONS = ("multiprocessing_context", "persistent_workers", "prefetch_factor", "worker_init_fn")
# How often the main process of a split budget reads its tree's Pss_Anon (a walk per process).
TREE_INTERVAL = 2.0


def tick() -> int:
    """The next value of the process-wide use counter (higher = used more recently)."""
    global _last_tick
    _last_tick = next(_TICK)
    return _last_tick


class Consumer(Protocol):
    """Something that holds memory the budget may ask it to release (a cache)."""

    name: str

    def usage(self) -> dict[str, int]:
        """Bytes held now, by kind: ``{"anon": ..., "mapped": ..., "gpu": ...}``."""
        ...

    def oldest(self, kind: str) -> int | None:
        """Use tick of the least recently used entry holding ``kind`` memory (one of :data:`MEMORY_KINDS`)."""
        ...

    def evict_oldest(self, kind: str) -> int:
        """Drop the least recently used entry holding ``kind`` memory; return the bytes freed."""
        ...


def malloc_trim() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim(0)``); False where unavailable.

    Without it, memory freed by a deleted index can stay in the allocator's arenas and keep
    counting as the process's anonymous memory (measured here: 517 MiB held until trimmed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


@dataclass
class _Stats:
    admitted: int = 0
    refused: int = 0
    evictions: dict[str, int] = field(default_factory=dict)
    evicted_bytes: int = 0
    peak_anon: int = 0
    peak_mapped: int = 0
    peak_gpu: int = 0
    mapped_over_limit: int = 0
    peak_tree_anon: int = 0
    tree_over_limit: int = 0


@dataclass(eq=False)
class _Reservation:
    """Bytes admitted for a block (:meth:`MemoryBudget.reserve`) and counted until it ends."""

    kind: str
    nbytes: int
    what: str
    anon_at_open: int  # the process's anonymous memory when admitted (before the allocation)
    evicted_at_open: int  # the budget's evicted bytes then: evictions since offset the growth


class _Split:
    """How a budget is divided between a main process and its DataLoader workers.

    Workers report their count through a shared counter that they inherit (fork) or receive as
    they are started (spawn, forkserver), so that without a ``main_share`` the main process
    takes its equal share, ``1 / (n + 1)``, once its first worker has started: a budget handed to
    workers without any split asked for is split equally.
    """

    def __init__(self, main_share: float | None = None) -> None:
        self.main_share = main_share
        self.pid = os.getpid()
        self._workers = multiprocessing.RawValue("i", 0)

    def main(self) -> float | None:
        """The main process's share, or None while it is not known yet."""
        if self.main_share is not None:
            return self.main_share
        n = self._workers.value if self._workers is not None else 0
        return 1 / (n + 1) if n > 0 else None  # before any worker has reported: not split yet

    def worker(self, num_workers: int) -> float:
        """A worker's share when the loader has ``num_workers`` workers (reported to the parent)."""
        if self._workers is not None:
            self._workers.value = num_workers
        main = self.main_share if self.main_share is not None else 1 / (num_workers + 1)
        return (1 - main) / num_workers

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # A shared counter can travel only to a process being started (spawn, forkserver); a copy
        # pickled elsewhere just cannot report its worker count back.
        if multiprocessing.context.get_spawning_popen() is None:
            state["_workers"] = None
        return state


def _worker_info() -> Any:
    """``torch.utils.data.get_worker_info()`` where torch is loaded (None outside DataLoader workers)."""
    data = sys.modules.get("torch.utils.data")
    return None if data is None else data.get_worker_info()


class MemoryBudget:
    """A memory ceiling for one process, or for a main process and its DataLoader workers together.

    Parameters
    ----------
    limit : int or str
        The hard ceiling of anonymous memory: bytes, ``"11GB"`` (11e9), ``"11GiB"`` or ``"80%"``
        of the effective machine limit. The effective limit is the smallest of this value, every
        cgroup limit on the process and physical RAM. With DataLoader workers (:meth:`split`) it
        is the ceiling of the whole process tree, divided into shares.
    mapped_limit : int or str, optional
        Soft ceiling on the consumers' mapped bytes (default: the limit).
    gpu_limit : int or str, optional
        Hard ceiling on the consumers' GPU bytes (indexes copied to the GPU) and GPU
        reservations; None: no ceiling. It is the main process's: workers get none of it.
    soft_fraction : float
        Above this fraction of the limit, admissions evict LRU entries first.
    meter : object with ``read() -> MemorySample``, optional
        How memory is measured (default: ``/proc/self/statm``, or ``Pss_Anon`` in DataLoader
        workers; tests pass a fake).
    machine_limit : Limit, optional
        The machine's limit (default: :func:`~vcfstore.limits.effective_machine_limit`).
    """

    def __init__(
        self,
        limit: int | str = DEFAULT_LIMIT,
        *,
        mapped_limit: int | str | None = None,
        gpu_limit: int | str | None = None,
        soft_fraction: float = 0.8,
        meter: Any = None,
        machine_limit: Limit | None = None,
    ) -> None:
        self.machine_limit = machine_limit or effective_machine_limit()
        requested = parse_size(limit, machine_limit=self.machine_limit.nbytes)
        if requested > self.machine_limit.nbytes:
            self.limit_source = self.machine_limit.source
        else:
            self.limit_source = "user"
        self._limit = min(requested, self.machine_limit.nbytes)
        self._mapped_limit = (
            parse_size(mapped_limit, machine_limit=self.machine_limit.nbytes)
            if mapped_limit is not None
            else self._limit
        )
        self._gpu_limit = None if gpu_limit is None else parse_size(gpu_limit, machine_limit=self.machine_limit.nbytes)
        if not 0 < soft_fraction <= 1:
            raise ArgumentError(f"soft_fraction must be in (0, 1], not {soft_fraction}")
        self.soft_fraction = soft_fraction
        self.uid = uuid.uuid4().hex
        self._origin_pid = os.getpid()
        self._split = _Split()  # an equal split once workers report; split() asks for another
        self._meter = meter
        self._meter_pid: int | None = None
        # Held weakly: a cache that its owner drops stops counting (and is never evicted from).
        self._consumers: weakref.WeakValueDictionary[int, Consumer] = weakref.WeakValueDictionary()
        self._reservations: tuple[int, list[_Reservation]] = (os.getpid(), [])
        self._tree: TreeSample | None = None  # the main process's last reading of its tree
        self._tree_at = -float("inf")
        self.stats = _Stats()
        self._lock = threading.RLock()
        self._sampler: _Sampler | None = None

    # --- limits ----------------------------------------------------------------------------
    @property
    def share(self) -> float:
        """This process's share of the limit: 1 until the budget is :meth:`split` between processes.

        In a DataLoader worker that received the budget from a split main process, the worker's
        share is taken on first use if ``worker_init_fn`` has not taken it already.
        """
        return self._resolve()[1]

    def _resolve(self) -> tuple[str, float]:
        """(role, share): "worker" (a DataLoader worker), "main" (split, or its workers started) or "alone"."""
        pid = os.getpid()
        entry = _PROCESS_SHARE.get(self.uid)
        if entry is not None and entry[0] == pid:
            return "worker", entry[1]
        if self._split.pid == pid:
            main = self._split.main()
            if main is not None:
                return "main", main
        if pid != self._origin_pid:
            info = _worker_info()
            if info is not None:  # a worker given this budget by its main process
                return "worker", self._enter_worker(info)
        return "alone", 1.0

    @property
    def limit(self) -> int:
        """Hard ceiling of this process's anonymous memory, in bytes."""
        return int(self._limit * self.share)

    @property
    def soft_limit(self) -> int:
        return int(self.limit * self.soft_fraction)

    @property
    def mapped_limit(self) -> int:
        return int(self._mapped_limit * self.share)

    @property
    def gpu_limit(self) -> int | None:
        """Hard ceiling of the GPU bytes (None: none); 0 in DataLoader workers, which never hold GPU memory."""
        if self._gpu_limit is None:
            return None
        return 0 if self._resolve()[0] == "worker" else self._gpu_limit

    @gpu_limit.setter
    def gpu_limit(self, value: int | str | None) -> None:
        self._gpu_limit = None if value is None else parse_size(value, machine_limit=self.machine_limit.nbytes)

    # --- splitting between processes -------------------------------------------------------
    def split(self, num_workers: int | None = None, main_share: float | None = None) -> WorkerInit:
        """Divide the limit between this (main) process and its DataLoader workers; the main share applies now.

        The main process keeps ``main_share`` of the limit (default: an equal share,
        ``1 / (num_workers + 1)``) from this call on: its caches are evicted down to the new soft
        level at once. Each worker takes ``(1 - main_share) / n`` when it starts, ``n`` being the
        loader's real worker count, so the shares add up to the limit for fork, spawn and
        forkserver workers, persistent or re-created every epoch. Workers that received this
        budget (in their dataset) take their share on first use even without the returned
        ``worker_init_fn``, and a budget handed to workers without any split is split equally
        (the main process takes ``1 / (n + 1)`` once its first worker has started). A worker
        whose share cannot hold what it uses when it starts plus its dataset's
        ``budget_needs()`` bytes raises :class:`MemoryBudgetExceeded` with the figures. Split
        before the loader starts, and use one loader with workers per budget at a time.

        Parameters
        ----------
        num_workers : int, optional
            The loader's worker count; needed only for the default ``main_share``. With neither
            argument, the main process takes ``1 / (n + 1)`` once its first worker has started.
        main_share : float, optional
            The main process's fraction of the limit, in (0, 1). Give the main process (model,
            optimizer, retrieval) the larger share; workers only read tokens.

        Returns
        -------
        WorkerInit
            A picklable ``worker_init_fn`` for ``torch.utils.data.DataLoader``.

        Raises
        ------
        ArgumentError
            For a worker count below 1 or a share outside (0, 1).
        MemoryBudgetExceeded
            When the main process already uses more than its share outside its caches.
        """
        if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)):
            raise ArgumentError(f"num_workers must be an integer, not {num_workers!r}")
        if num_workers is not None and num_workers < 1:
            raise ArgumentError(f"num_workers must be at least 1 to split the budget, not {num_workers}")
        if main_share is not None and not 0 < main_share < 1:
            raise ArgumentError(f"main_share must be in (0, 1), not {main_share}")
        if main_share is None and num_workers is not None:
            main_share = 1 / (num_workers + 1)
        with self._lock:
            self._split = _Split(main_share)
            self._tree, self._tree_at = None, -float("inf")
            if main_share is not None:
                anon, _ = self.measure()
                fixed = anon - self.held("anon")
                if fixed > self.limit:
                    self.stats.refused += 1
                    raise MemoryBudgetExceeded(
                        f"memory budget too small for the main process: its share is {format_bytes(self.limit)} "
                        f"(main_share {main_share:.2f} of {format_bytes(self._limit)}), but it already uses "
                        f"{format_bytes(fixed)} of anonymous memory outside its caches (interpreter, torch, model, "
                        f"data); to fix: raise main_share to at least {fixed / self._limit:.2f} or the limit to at "
                        f"least {format_bytes(int(fixed / main_share))}"
                    )
                self.shrink()
        return WorkerInit(self)

    def worker_init_fn(self, main_share: float | None = None, *, num_workers: int | None = None) -> WorkerInit:
        """A ``worker_init_fn`` for ``torch.utils.data.DataLoader`` that splits the budget (see :meth:`split`).

        The main process takes ``main_share`` of the limit at once; each of the ``n`` workers
        takes ``(1 - main_share) / n`` when it starts. Without ``main_share`` the split is equal:
        ``1 / (n + 1)`` each, applied in the main process now if ``num_workers`` is given, else
        once the first worker has started.
        """
        return self.split(num_workers, main_share)

    def dataloader_kwargs(self, num_workers: int, main_share: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Keyword arguments for ``DataLoader``: ``num_workers`` and, with workers, the split's ``worker_init_fn``.

        ``DataLoader(ds, batch_sampler=..., **budget.dataloader_kwargs(4, main_share=0.6))``
        splits the budget now (:meth:`split`). Other keyword arguments (``multiprocessing_context``,
        ``persistent_workers``, ...) are passed on; with ``num_workers=0`` the whole limit stays
        with the main process and the options that torch allows only with workers are left out.
        """
        if num_workers == 0:
            return {"num_workers": 0, **{k: v for k, v in kwargs.items() if k not in _WORKER_OPTIONS}}
        return {"num_workers": num_workers, "worker_init_fn": self.split(num_workers, main_share), **kwargs}

    def _enter_worker(self, info: Any) -> float:
        """Take this worker's share (``info``: torch's worker info) and check that it can work in it."""
        share = self._split.worker(info.num_workers)
        _PROCESS_SHARE[self.uid] = (os.getpid(), share)
        self._lock = threading.RLock()  # a lock copied by fork may have been held by another thread
        # A forked worker inherits the main process's cache entries: they are not its to use, and
        # what it needs is measured without them.
        while self._evict_one("anon") is not None:
            pass
        malloc_trim()
        anon = self.meter.read().anon
        # Pages still shared copy-on-write with the main process count here in part; a fork
        # worker keeps each one whole once the main process rewrites it (up to its RssAnon).
        mapped_anon = StatmMeter().read().anon
        budget_needs = getattr(info.dataset, "budget_needs", None)
        needs = int(budget_needs()) if callable(budget_needs) else 0
        limit = int(self._limit * share)
        if anon + needs > limit:
            self.stats.refused += 1
            need = anon + needs
            n, main = info.num_workers, 1 - share * info.num_workers
            fixes = [f"raise the limit to at least {format_bytes(int(need * n / (1 - main)))}"]
            if 1 - need * n / self._limit > 0:
                fixes.append(f"lower main_share to at most {1 - need * n / self._limit:.2f}")
            if int((1 - main) * self._limit // need) >= 1:
                fixes.append(f"use at most {int((1 - main) * self._limit // need)} workers")
            fork_note = (
                f" (a fork worker's figure also grows toward the {format_bytes(mapped_anon)} of anonymous memory it "
                "maps as the main process rewrites the pages they share; spawn workers share none)"
                if mapped_anon > anon + needs
                else ""
            )
            raise MemoryBudgetExceeded(
                f"memory budget too small for DataLoader worker {info.id} of {n}: its share is "
                f"{format_bytes(limit)} ((1 - main_share {main:.2f}) / {n} of {format_bytes(self._limit)}), but it "
                f"already uses {format_bytes(anon)} (interpreter, torch, its part of the pages shared with the main "
                f"process) and needs {format_bytes(needs)} more (its dataset's budget_needs(): reading one window)"
                f"{fork_note}; to fix: " + ", or ".join(fixes)
            )
        return share

    # --- measuring -------------------------------------------------------------------------
    @property
    def meter(self) -> Any:
        """The process's meter: ``Pss_Anon`` in DataLoader workers, else statm; a forked copy builds its own.

        A worker's RssAnon would count every page it shares copy-on-write with the main process;
        the main process keeps RssAnon (about 1 us a read, against milliseconds for a walk of its
        mappings with torch loaded), which counts those pages whole: the shares' sum stays an
        upper bound of the tree's ``Pss_Anon``.
        """
        if self._meter is not None and self._meter_pid is None:  # given by the caller
            return self._meter
        kind = PssMeter if self._resolve()[0] == "worker" else StatmMeter
        if self._meter is None or self._meter_pid != os.getpid() or type(self._meter) is not kind:
            self._meter, self._meter_pid = kind(), os.getpid()
        return self._meter

    def measure(self) -> tuple[int, int]:
        """(anonymous bytes of the process, mapped bytes held by consumers), updating peaks."""
        anon = self.meter.read().anon
        mapped = self.held("mapped")
        self.stats.peak_anon = max(self.stats.peak_anon, anon)
        self.stats.peak_mapped = max(self.stats.peak_mapped, mapped)
        return anon, mapped

    def held(self, kind: str) -> int:
        """Bytes of ``kind`` memory that the registered consumers hold."""
        return sum(c.usage()[kind] for c in self.consumers)

    def tree_usage(self) -> TreeSample:
        """``Pss_Anon`` of this process and its descendants (its DataLoader workers), by pid.

        ``tree_usage().total`` is the run's one figure, with pages shared copy-on-write counted
        once: what must stay under the limit once the budget is split.
        """
        tree = tree_pss_anon()
        self.stats.peak_tree_anon = max(self.stats.peak_tree_anon, tree.total)
        if tree.total > self._limit:
            self.stats.tree_over_limit += 1
        return tree

    def _tree_others(self) -> int:
        """The workers' ``Pss_Anon``, read at most every :data:`TREE_INTERVAL` s in a split main process."""
        if self._resolve()[0] != "main":
            return 0
        now = time.monotonic()
        if now - self._tree_at >= TREE_INTERVAL:
            self._tree, self._tree_at = self.tree_usage(), now
        return self._tree.others if self._tree is not None else 0

    def _soft_target(self) -> int:
        """The soft level: this process's share of it, lowered while its workers leave less of the tree's."""
        return min(self.soft_limit, int(self._limit * self.soft_fraction) - self._tree_others())

    # --- reservations ----------------------------------------------------------------------
    def _live_reservations(self) -> list[_Reservation]:
        if self._reservations[0] != os.getpid():  # a forked copy: the parent's blocks are not running here
            self._reservations = (os.getpid(), [])
        return self._reservations[1]

    def reserved(self, kind: str = "anon", anon: int | None = None) -> int:
        """Bytes of ``kind`` reserved by open :meth:`reserve` blocks and not yet allocated.

        Anonymous bytes that a block has allocated since it was admitted show in the measured
        figure already, so only the rest counts: the total less the growth since the oldest open
        block was admitted (with the bytes evicted since added back).
        """
        with self._lock:
            live = [r for r in self._live_reservations() if r.kind == kind]
            total = sum(r.nbytes for r in live)
            if not live or kind != "anon":
                return total
            now = self.meter.read().anon if anon is None else anon
            grown = now - live[0].anon_at_open + (self.stats.evicted_bytes - live[0].evicted_at_open)
            return max(0, total - max(0, grown))

    @contextlib.contextmanager
    def reserve(self, nbytes: int, what: str = "a transient allocation", *, kind: str = "anon") -> Iterator[None]:
        """Admit ``nbytes`` for a block and keep them counted until it ends: ``with budget.reserve(n, "search"):``.

        For per-batch working sets (search temporaries, retrieved embeddings and their autograd
        graph): caches are evicted before the block allocates, and admissions inside the block
        (or in other threads) leave room for the bytes it has not allocated yet. ``kind`` is
        ``"anon"`` or ``"gpu"``. Raises :class:`MemoryBudgetExceeded` as :meth:`admit` does.
        """
        if kind not in ("anon", "gpu"):
            raise ArgumentError(f"reserve takes kind 'anon' or 'gpu', not {kind!r}")
        nbytes = int(nbytes)
        with self._lock:
            anon = self._admit(nbytes, kind, what)
            r = _Reservation(kind, nbytes, what, anon, self.stats.evicted_bytes)
            self._live_reservations().append(r)
        try:
            yield
        finally:
            with self._lock:
                live = self._live_reservations()
                if r in live:
                    live.remove(r)
                if kind == "anon":
                    self.shrink()  # what the block left behind (or the allocator kept) goes before the next one

    # --- consumers -------------------------------------------------------------------------
    @property
    def consumers(self) -> list[Consumer]:
        """The live registered consumers, in registration order."""
        return [c for _, c in sorted(self._consumers.items())]

    def register(self, consumer: Consumer) -> None:
        """Let the budget evict from ``consumer`` when memory is needed (held weakly)."""
        with self._lock:
            if consumer not in self._consumers.values():
                self._consumers[next(_REGISTERED)] = consumer

    def unregister(self, consumer: Consumer) -> None:
        with self._lock:
            for key, c in list(self._consumers.items()):
                if c is consumer:
                    del self._consumers[key]

    def _evict_one(self, kind: str, *, spare_last: bool = False) -> int | None:
        """Evict the globally least recently used entry of ``kind``; None if nothing is left.

        With ``spare_last``, the entry used last (the one the caller is working with, as when
        rows are gathered from a window just fetched) is not evicted: freeing it to get under a
        soft level would only make the next call load it again.
        """
        best: tuple[int, Consumer] | None = None
        for c in self.consumers:
            t = c.oldest(kind)
            if t is not None and (best is None or t < best[0]):
                best = (t, c)
        if best is None or (spare_last and best[0] == _last_tick):
            return None
        freed = best[1].evict_oldest(kind)
        name = best[1].name
        self.stats.evictions[name] = self.stats.evictions.get(name, 0) + 1
        self.stats.evicted_bytes += freed
        return freed

    # --- admission -------------------------------------------------------------------------
    def admit(self, nbytes: int, *, kind: str = "anon", what: str = "an allocation") -> None:
        """Make room for ``nbytes`` of ``kind`` memory ("anon", "mapped" or "gpu") before allocating it.

        Evicts least-recently-used entries of that kind until the request fits: under the soft
        level (anon), the mapped limit (mapped) or the GPU limit (gpu). Anonymous and GPU requests
        that cannot fit under their hard limit with nothing left to evict raise
        :class:`MemoryBudgetExceeded`; mapped requests never raise (mapped pages are reclaimable)
        and are counted as over the limit instead. Bytes held by open :meth:`reserve` blocks and
        not allocated yet count as used.
        """
        self._admit(int(nbytes), kind, what)

    def _admit(self, nbytes: int, kind: str, what: str) -> int:
        """:meth:`admit`; returns the anonymous memory measured when the request was admitted."""
        if kind not in MEMORY_KINDS:
            raise ArgumentError(f"kind must be one of {MEMORY_KINDS}, not {kind!r}")
        with self._lock:
            anon, _ = self.measure()
            if kind == "anon":
                pending = self.reserved("anon", anon)
                over = anon - self.held("anon") + pending + nbytes > self.limit  # cannot fit with every cache emptied
                if over and malloc_trim():  # unless the allocator holds freed pages: count without them
                    anon, _ = self.measure()
                    pending = self.reserved("anon", anon)
                    over = anon - self.held("anon") + pending + nbytes > self.limit
                if over:
                    self.stats.refused += 1
                    raise MemoryBudgetExceeded(self._refusal(nbytes, what, anon))
            gpu_limit = self.gpu_limit
            if kind == "gpu" and gpu_limit is not None and nbytes + self.reserved("gpu") > gpu_limit:
                self.stats.refused += 1
                raise MemoryBudgetExceeded(self._gpu_refusal(nbytes, what, gpu_limit))
            trimmed = False
            while True:
                anon, mapped = self.measure()
                if kind == "mapped":
                    fits = mapped + nbytes <= self.mapped_limit
                elif kind == "gpu":
                    gpu = self.held("gpu") + self.reserved("gpu")
                    fits = gpu_limit is None or gpu + nbytes <= gpu_limit
                    if fits:
                        self.stats.peak_gpu = max(self.stats.peak_gpu, gpu + nbytes)
                else:
                    pending = self.reserved("anon", anon)
                    fits = anon + pending + nbytes <= self._soft_target()
                if fits:
                    break
                # Under the soft level the entry in use is spared; the hard limit takes it too.
                over_hard = kind == "anon" and anon + pending + nbytes > self.limit
                if self._evict_one(kind, spare_last=kind == "anon" and not over_hard) is not None:
                    if kind == "anon":
                        malloc_trim()  # freed memory may stay in the allocator's arenas otherwise
                    continue
                if kind == "anon" and not trimmed:
                    trimmed = True  # nothing left to evict: give the allocator's free pages back once
                    if malloc_trim():
                        continue
                if kind == "mapped":
                    self.stats.mapped_over_limit += 1
                    break
                if kind == "anon" and not over_hard:
                    break  # above the soft level, below the hard one: allowed
                self.stats.refused += 1
                raise MemoryBudgetExceeded(self._refusal(nbytes, what, anon))
            self.stats.admitted += 1
            return anon

    def shrink(self) -> int:
        """Evict LRU entries until anonymous memory is under the soft level; return evictions.

        Above the soft level, the allocator's free pages are given back first (``malloc_trim``).
        """
        n = 0
        with self._lock:
            anon, _ = self.measure()
            if anon + self.reserved("anon", anon) <= self._soft_target():
                return 0
            malloc_trim()
            while True:
                anon, _ = self.measure()
                soft = anon + self.reserved("anon", anon) <= self._soft_target()
                if soft or self._evict_one("anon", spare_last=True) is None:
                    break
                n += 1
                malloc_trim()
        return n

    def _refusal(self, nbytes: int, what: str, anon: int) -> str:
        lines = [
            f"memory budget exceeded: {what} needs {format_bytes(nbytes)}, but this process already uses "
            f"{format_bytes(anon)} of anonymous memory and its limit is {format_bytes(self.limit)} "
            f"({self._limit_text()}), even with every cache emptied.",
            "usage by consumer:",
        ]
        for c in self.consumers:
            u = c.usage()
            lines.append(
                f"  {c.name}: {format_bytes(u['anon'])} anonymous, {format_bytes(u['mapped'])} mapped, "
                f"{format_bytes(u['gpu'])} GPU"
            )
        for r in self._live_reservations():
            if r.kind == "anon":
                lines.append(f"  reserved for {r.what}: {format_bytes(r.nbytes)}")
        lines.append(
            "  everything else (interpreter, model, batches): "
            f"{format_bytes(max(0, anon - self.held('anon')))} anonymous"
        )
        lines.append(
            "to fix: raise the limit (MemoryBudget(limit=...)), lower the batch size or index size "
            "(an fp16 or PQ index kind, or the exact backend), or, with DataLoader workers, give this "
            "process a larger share (main_share) or use fewer workers."
        )
        return "\n".join(lines)

    def _gpu_refusal(self, nbytes: int, what: str, gpu_limit: int) -> str:
        if self._resolve()[0] == "worker":
            return (
                f"memory budget exceeded: {what} needs {format_bytes(nbytes)} of GPU memory in a DataLoader worker, "
                "and workers have no share of the GPU limit: keep CUDA in the main process (collate on the CPU)"
            )
        reserved = self.reserved("gpu")
        held = f" with {format_bytes(reserved)} reserved" if reserved else ""
        return (
            f"memory budget exceeded: {what} needs {format_bytes(nbytes)} of GPU memory{held}, more than the GPU "
            f"limit of {format_bytes(gpu_limit)}; raise gpu_limit, use a smaller index kind (fp16), lower the "
            "batch size, or search on the CPU"
        )

    def _limit_text(self) -> str:
        text = f"limit from {self.limit_source}"
        role, share = self._resolve()
        if share < 1:
            text += f", a {share:.0%} {'worker' if role == 'worker' else 'main-process'} share"
        return text

    # --- observability ---------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Limits, usage by consumer, peaks and eviction counts; ``tree_anon``: the process tree's ``Pss_Anon``."""
        anon, mapped = self.measure()
        consumers = {c.name: c.usage() for c in self.consumers}
        role, share = self._resolve()
        tree = self.tree_usage()
        return {
            "role": role,
            "total_limit": self._limit,
            "tree_anon": tree.total,
            "tree_processes": len(tree.by_pid),
            "peak_tree_anon": self.stats.peak_tree_anon,
            "tree_over_limit": self.stats.tree_over_limit,
            "reserved": self.reserved("anon", anon),
            "reserved_gpu": self.reserved("gpu"),
            "limit": self.limit,
            "limit_source": self.limit_source,
            "machine_limit": {"bytes": self.machine_limit.nbytes, "source": self.machine_limit.source},
            "soft_limit": self.soft_limit,
            "mapped_limit": self.mapped_limit,
            "gpu_limit": self.gpu_limit,
            "gpu": self.held("gpu"),
            "peak_gpu": self.stats.peak_gpu,
            "share": share,
            "anon": anon,
            "mapped": mapped,
            "consumers": consumers,
            "peak_anon": self.stats.peak_anon,
            "peak_mapped": self.stats.peak_mapped,
            "admitted": self.stats.admitted,
            "refused": self.stats.refused,
            "evictions": dict(self.stats.evictions),
            "evicted_bytes": self.stats.evicted_bytes,
            "mapped_over_limit": self.stats.mapped_over_limit,
        }

    def report_table(self) -> str:
        """:meth:`report` as a readable table (see :func:`vcfstore.app.display.budget_table`)."""
        from vcfstore.app.display import budget_table

        return budget_table(self.report())

    def start_sampler(self, interval: float = 0.05) -> None:
        """Sample in a background thread: keep peaks and shrink caches above the soft level.

        In a split main process the soft level also falls while the workers' ``Pss_Anon`` (read
        every :data:`TREE_INTERVAL` seconds) leaves less of the tree's soft level, so its caches
        make room.
        """
        if self._sampler is None:
            self._sampler = _Sampler(self, interval)
            self._sampler.start()

    def stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None

    @contextlib.contextmanager
    def track(self, interval: float = 0.005) -> Iterator[PeakSampler]:
        """Record the peak memory of a block: ``with budget.track() as t: ...; t.peak_anon``."""
        with PeakSampler(interval=interval) as sampler:
            yield sampler
        self.stats.peak_anon = max(self.stats.peak_anon, sampler.peak_anon)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _lock=None, _sampler=None, _consumers=None, _meter=None, _meter_pid=None, _reservations=(0, []), _tree=None
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._consumers = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class WorkerInit:
    """The ``worker_init_fn`` of a split budget: the worker takes its share (see :meth:`MemoryBudget.split`).

    Picklable, so spawn and forkserver workers receive it; call it from your own
    ``worker_init_fn`` to combine it with other set-up.
    """

    budget: MemoryBudget

    def __call__(self, worker_id: int) -> None:
        if _worker_info() is None:
            raise ArgumentError("a memory budget's worker_init_fn runs in DataLoader workers only")
        self.budget._resolve()  # a worker takes its share on first use: now, before any item is read


class _Sampler(threading.Thread):
    def __init__(self, budget: MemoryBudget, interval: float) -> None:
        super().__init__(name="vcfstore-budget-sampler", daemon=True)
        self.budget, self.interval = budget, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.budget.shrink()  # in a split main process, also against the tree's figure (low rate)
            except Exception as e:  # noqa: BLE001 - a sampler must never kill the process it watches
                warnings.warn(f"vcfstore budget sampler stopped: {e}", stacklevel=1)
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def format_bytes(n: int) -> str:
    """``n`` bytes in GiB, MiB or KiB with two decimals."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
