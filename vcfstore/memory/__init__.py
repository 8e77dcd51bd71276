"""The memory budget: limits (cgroup-aware), cheap meters, budgeted LRU caches, the window cache.

Importing this package loads neither torch nor FAISS.
"""

from __future__ import annotations

from vcfstore.errors import MemoryBudgetExceeded
from vcfstore.memory.budget import MEMORY_KINDS, Consumer, MemoryBudget, WorkerInit, format_bytes, malloc_trim, tick
from vcfstore.memory.limits import Limit, cgroup_limits, effective_machine_limit, parse_size, physical_memory
from vcfstore.memory.lru import LruCache
from vcfstore.memory.meters import (
    MemorySample,
    PeakSampler,
    PssMeter,
    StatmMeter,
    TreePeakSampler,
    TreeSample,
    tree_pss_anon,
)
from vcfstore.memory.window_cache import WindowCache

__all__ = [
    "MEMORY_KINDS",
    "Consumer",
    "Limit",
    "LruCache",
    "MemoryBudget",
    "MemoryBudgetExceeded",
    "MemorySample",
    "PeakSampler",
    "PssMeter",
    "StatmMeter",
    "TreePeakSampler",
    "TreeSample",
    "WindowCache",
    "WorkerInit",
    "cgroup_limits",
    "effective_machine_limit",
    "format_bytes",
    "malloc_trim",
    "parse_size",
    "physical_memory",
    "tick",
    "tree_pss_anon",
]
