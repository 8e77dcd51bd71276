"""The module paths of vcfstore 0.1 (a flat package), kept importable.

``import vcfstore.faiss_disk`` or ``from vcfstore.meter import run_measured`` still work: each old
path is a module whose attributes are looked up in the modules that now hold its names. Such an
import warns once with a :class:`DeprecationWarning` naming the new place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any

# old module -> the modules that hold its public names now (searched in order)
MOVED: dict[str, tuple[str, ...]] = {
    "vcfstore.budget": ("vcfstore.memory",),
    "vcfstore.build": ("vcfstore.store.builder",),
    "vcfstore.cache": ("vcfstore.memory.lru",),
    "vcfstore.cli": ("vcfstore.app.cli",),
    "vcfstore.data": ("vcfstore.retrieval.torch_data",),
    "vcfstore.demo": ("vcfstore.app.demo",),
    "vcfstore.display": ("vcfstore.app.display",),
    "vcfstore.encode": ("vcfstore.retrieval.embedding",),
    "vcfstore.exact": ("vcfstore.retrieval.exact_search",),
    "vcfstore.faiss_disk": ("vcfstore.index",),
    "vcfstore.limits": ("vcfstore.memory.limits",),
    "vcfstore.masks": ("vcfstore.store.masks",),
    "vcfstore.meter": ("vcfstore.memory.meters", "vcfstore.testing"),
    "vcfstore.models": ("vcfstore.retrieval.layers",),
    "vcfstore.train_example": ("vcfstore.app.train_example",),
    "vcfstore.vocab": ("vcfstore.store.vocab",),
    "vcfstore.window_cache": ("vcfstore.memory.window_cache",),
    "vcfstore.windows": ("vcfstore.store.windows",),
}


class _MovedModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        for target in MOVED[self.__name__]:
            module = importlib.import_module(target)
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _MovedModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {' and '.join(MOVED[module.__name__])}; import from there or from vcfstore",
            DeprecationWarning,
            stacklevel=2,
        )


def install() -> None:
    """Make the old module paths importable (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
