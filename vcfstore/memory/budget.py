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

DataLoader workers: each process measures only itself, so shared pages are never summed over
processes. :meth:`MemoryBudget.worker_init_fn` gives each worker an equal share of the limit;
inside a worker, anonymous memory is read as proportional set size (``Pss_Anon`` from
``/proc/self/smaps_rollup``, sampled at a low rate), so pages still shared copy-on-write with the
parent count once across the tree instead of once per worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from vcfstore.errors import ArgumentError, MemoryBudgetExceeded
from vcfstore.memory.limits import Limit, effective_machine_limit, parse_size
from vcfstore.memory.meters import PeakSampler, PssMeter, StatmMeter

DEFAULT_LIMIT = "11GB"
MEMORY_KINDS = ("anon", "mapped", "gpu")

# Monotonic use counter shared by every cache of the process: LRU order across consumers.
_TICK = itertools.count()
# Per-process share of each budget (by budget uid), set by worker_init_fn in worker processes.
_PROCESS_SHARE: dict[str, float] = {}


def tick() -> int:
    """The next value of the process-wide use counter (higher = used more recently)."""
    return next(_TICK)


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


class MemoryBudget:
    """A memory ceiling for one process (or one share of it per DataLoader worker).

    Parameters
    ----------
    limit : int or str
        The hard ceiling of anonymous memory: bytes, ``"11GB"`` (11e9), ``"11GiB"`` or ``"80%"``
        of the effective machine limit. The effective limit is the smallest of this value, every
        cgroup limit on the process and physical RAM.
    mapped_limit : int or str, optional
        Soft ceiling on the consumers' mapped bytes (default: the limit).
    gpu_limit : int or str, optional
        Hard ceiling on the consumers' GPU bytes (indexes copied to the GPU); None: no ceiling.
    soft_fraction : float
        Above this fraction of the limit, admissions evict LRU entries first.
    meter : object with ``read() -> MemorySample``, optional
        How memory is measured (default: ``/proc/self/statm``; tests pass a fake).
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
        self.gpu_limit = None if gpu_limit is None else parse_size(gpu_limit, machine_limit=self.machine_limit.nbytes)
        if not 0 < soft_fraction <= 1:
            raise ArgumentError(f"soft_fraction must be in (0, 1], not {soft_fraction}")
        self.soft_fraction = soft_fraction
        self.uid = uuid.uuid4().hex
        self._meter = meter
        self._meter_pid: int | None = None
        # Held weakly: a cache that its owner drops stops counting (and is never evicted from).
        self._consumers: weakref.WeakValueDictionary[int, Consumer] = weakref.WeakValueDictionary()
        self.stats = _Stats()
        self._lock = threading.RLock()
        self._sampler: _Sampler | None = None

    # --- limits ----------------------------------------------------------------------------
    @property
    def share(self) -> float:
        """This process's share of the budget (1 outside DataLoader workers)."""
        return _PROCESS_SHARE.get(self.uid, 1.0)

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

    # --- measuring -------------------------------------------------------------------------
    @property
    def meter(self) -> Any:
        """The process's meter; a forked copy of the budget builds its own."""
        if self._meter is not None and (self._meter_pid is None or self._meter_pid == os.getpid()):
            return self._meter
        self._meter = PssMeter() if self.uid in _PROCESS_SHARE else StatmMeter()
        self._meter_pid = os.getpid()
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

    # --- consumers -------------------------------------------------------------------------
    @property
    def consumers(self) -> list[Consumer]:
        """The live registered consumers, in registration order."""
        return [c for _, c in sorted(self._consumers.items())]

    def register(self, consumer: Consumer) -> None:
        """Let the budget evict from ``consumer`` when memory is needed (held weakly)."""
        with self._lock:
            if consumer not in self._consumers.values():
                self._consumers[next(_TICK)] = consumer

    def unregister(self, consumer: Consumer) -> None:
        with self._lock:
            for key, c in list(self._consumers.items()):
                if c is consumer:
                    del self._consumers[key]

    def _evict_one(self, kind: str) -> int | None:
        """Evict the globally least recently used entry of ``kind``; None if nothing is left."""
        best: tuple[int, Consumer] | None = None
        for c in self.consumers:
            t = c.oldest(kind)
            if t is not None and (best is None or t < best[0]):
                best = (t, c)
        if best is None:
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
        and are counted as over the limit instead.
        """
        if kind not in MEMORY_KINDS:
            raise ArgumentError(f"kind must be one of {MEMORY_KINDS}, not {kind!r}")
        nbytes = int(nbytes)
        with self._lock:
            if kind == "anon":
                anon, _ = self.measure()
                if anon - self.held("anon") + nbytes > self.limit:  # cannot fit with every cache emptied
                    self.stats.refused += 1
                    raise MemoryBudgetExceeded(self._refusal(nbytes, what, anon))
            if kind == "gpu" and self.gpu_limit is not None and nbytes > self.gpu_limit:
                self.stats.refused += 1
                raise MemoryBudgetExceeded(
                    f"memory budget exceeded: {what} needs {format_bytes(nbytes)} of GPU memory, more than the GPU "
                    f"limit of {format_bytes(self.gpu_limit)}; raise gpu_limit, use a smaller index kind (fp16), "
                    "or search on the CPU"
                )
            while True:
                anon, mapped = self.measure()
                if kind == "mapped":
                    fits = mapped + nbytes <= self.mapped_limit
                elif kind == "gpu":
                    gpu = self.held("gpu")
                    fits = self.gpu_limit is None or gpu + nbytes <= self.gpu_limit
                    if fits:
                        self.stats.peak_gpu = max(self.stats.peak_gpu, gpu + nbytes)
                else:
                    fits = anon + nbytes <= self.soft_limit
                if fits:
                    break
                if self._evict_one(kind) is not None:
                    if kind == "anon":
                        malloc_trim()  # freed memory may stay in the allocator's arenas otherwise
                    continue
                if kind == "mapped":
                    self.stats.mapped_over_limit += 1
                    break
                if kind == "anon" and anon + nbytes <= self.limit:
                    break  # above the soft level, below the hard one: allowed
                self.stats.refused += 1
                raise MemoryBudgetExceeded(self._refusal(nbytes, what, anon))
            self.stats.admitted += 1

    def shrink(self) -> int:
        """Evict LRU entries until anonymous memory is under the soft level; return evictions."""
        n = 0
        with self._lock:
            while self.measure()[0] > self.soft_limit and self._evict_one("anon") is not None:
                n += 1
            if n:
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
        lines.append(
            "  everything else (interpreter, model, batches): "
            f"{format_bytes(max(0, anon - self.held('anon')))} anonymous"
        )
        lines.append(
            "to fix: raise the limit (MemoryBudget(limit=...)), lower the batch size or index size "
            "(an fp16 or PQ index kind, or the exact backend), or use fewer DataLoader workers "
            "(each gets an equal share)."
        )
        return "\n".join(lines)

    def _limit_text(self) -> str:
        text = f"limit from {self.limit_source}"
        if self.share < 1:
            text += f", a {self.share:.0%} worker share"
        return text

    # --- workers ---------------------------------------------------------------------------
    def worker_init_fn(self, main_share: float | None = None) -> Callable[[int], None]:
        """A ``worker_init_fn`` for ``torch.utils.data.DataLoader`` that splits the budget.

        Each of ``n`` workers gets ``(1 - main_share) / n`` of the limit; the main process keeps
        ``main_share`` (default ``1 / (n + 1)``: an equal share). Budgets in the worker (this one,
        or a pickled copy of it under spawn) then apply the share and measure PSS.
        """
        return _WorkerInit(self.uid, main_share)

    # --- observability ---------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        """Limits, usage by consumer, peaks and eviction counts."""
        anon, mapped = self.measure()
        consumers = {c.name: c.usage() for c in self.consumers}
        return {
            "limit": self.limit,
            "limit_source": self.limit_source,
            "machine_limit": {"bytes": self.machine_limit.nbytes, "source": self.machine_limit.source},
            "soft_limit": self.soft_limit,
            "mapped_limit": self.mapped_limit,
            "gpu_limit": self.gpu_limit,
            "gpu": self.held("gpu"),
            "peak_gpu": self.stats.peak_gpu,
            "share": self.share,
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
        """Sample in a background thread: keep peaks and shrink caches above the soft level."""
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
        state.update(_lock=None, _sampler=None, _consumers=None, _meter=None, _meter_pid=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
        self._consumers = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class _WorkerInit:
    uid: str
    main_share: float | None

    def __call__(self, worker_id: int) -> None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        n = info.num_workers if info is not None else 1
        main = self.main_share if self.main_share is not None else 1 / (n + 1)
        if not 0 <= main < 1:
            raise ArgumentError(f"main_share must be in [0, 1), not {main}")
        _PROCESS_SHARE[self.uid] = (1 - main) / n


class _Sampler(threading.Thread):
    def __init__(self, budget: MemoryBudget, interval: float) -> None:
        super().__init__(name="vcfstore-budget-sampler", daemon=True)
        self.budget, self.interval = budget, interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                if self.budget.measure()[0] > self.budget.soft_limit:
                    self.budget.shrink()
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
