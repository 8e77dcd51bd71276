"""An LRU cache that registers with a memory budget as an evictable consumer."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vcfstore.memory.budget import MEMORY_KINDS, MemoryBudget, tick

V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    sizes: dict[str, int]  # bytes by kind: anon, mapped, gpu
    used: int


class LruCache(Generic[V]):
    """Least-recently-used cache of values that hold anonymous and/or mapped memory.

    Parameters
    ----------
    name : str
        How the budget's reports name this cache.
    budget : MemoryBudget, optional
        Admits every new entry first (evicting LRU entries of any registered cache) and may
        evict from this cache to admit others.
    max_entries : int, optional
        A count limit on top of the budget (None: only the budget limits it).
    on_evict : callable, optional
        Called with each evicted value (e.g. to close a mapping).
    """

    def __init__(
        self,
        name: str,
        budget: MemoryBudget | None = None,
        *,
        max_entries: int | None = None,
        on_evict: Callable[[V], None] | None = None,
    ) -> None:
        self.name = name
        self.budget = budget
        self.max_entries = max_entries
        self.on_evict = on_evict
        self._entries: OrderedDict[Hashable, _Entry[V]] = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0
        if budget is not None:
            budget.register(self)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """The cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable) -> V | None:
        """The cached value (marking it most recently used), or None."""
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                self.misses += 1
                return None
            self.hits += 1
            e.used = tick()
            self._entries.move_to_end(key)
            return e.value

    def admit(self, what: str = "a cache entry", **sizes: int) -> None:
        """Ask the budget for room before loading an entry: ``admit(anon=..., mapped=..., gpu=...)``."""
        if self.budget is not None:
            for kind, nbytes in sizes.items():
                if nbytes:
                    self.budget.admit(nbytes, kind=kind, what=f"{what} ({self.name})")

    def put(self, key: Hashable, value: V, *, anon: int = 0, mapped: int = 0, gpu: int = 0) -> None:
        """Insert (or replace) an entry holding these bytes; enforces ``max_entries``."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None and old.value is not value and self.on_evict is not None:
                self.on_evict(old.value)
            self._entries[key] = _Entry(value, {"anon": anon, "mapped": mapped, "gpu": gpu}, tick())
            while self.max_entries is not None and len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))

    def pop(self, key: Hashable) -> None:
        """Remove one entry (calling ``on_evict``)."""
        with self._lock:
            if key in self._entries:
                self._drop(key)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)

    def _drop(self, key: Hashable) -> int:
        e = self._entries.pop(key)
        if self.on_evict is not None:
            self.on_evict(e.value)
        return sum(e.sizes.values())

    # --- the budget's Consumer protocol -----------------------------------------------------
    def usage(self) -> dict[str, int]:
        with self._lock:
            return {kind: sum(e.sizes[kind] for e in self._entries.values()) for kind in MEMORY_KINDS}

    def oldest(self, kind: str) -> int | None:
        with self._lock:
            for e in self._entries.values():  # OrderedDict: least recently used first
                if e.sizes[kind] > 0:
                    return e.used
            return None

    def evict_oldest(self, kind: str) -> int:
        with self._lock:
            for key, e in self._entries.items():
                if e.sizes[kind] > 0:
                    return self._drop(key)
            return 0

    def stats(self) -> dict[str, Any]:
        return {"entries": len(self), "hits": self.hits, "misses": self.misses, **self.usage()}
