"""The index set's manifest: what was built, with which masks and weights, and how to check it.

``manifest.json`` records the format version, the store's identity, the index kind and
dimension, and per window the file, the mask (bits) and mask version, a digest of the embedding
weights, the vector count, size, SHA-256 of the file and of its first 64 KiB, and the largest
squared norm. It is rewritten atomically after every window, so a killed build leaves a
manifest of the windows that are really there.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from vcfstore._fileio import atomic_write_bytes, file_sha256
from vcfstore.errors import IndexSetError

MANIFEST = "manifest.json"
INDEX_FORMAT_VERSION = 1
INDEX_KINDS = {"flat": "Flat", "fp16": "SQfp16"}  # short names of FAISS factory strings
HEAD_BYTES = 1 << 16  # the prefix hashed at every open, so a damaged header never reaches FAISS


def factory_string(kind: str) -> str:
    """The FAISS factory string of an index kind (a short name, or a factory string as given)."""
    return INDEX_KINDS.get(kind, kind)


def window_file(w: int) -> str:
    return f"w{w:05d}.faiss"


def pack_mask(mask: np.ndarray) -> str:
    """A token mask as base64 of its packed bits (the manifest's ``mask_bits``)."""
    return base64.b64encode(np.packbits(np.asarray(mask, dtype=bool)).tobytes()).decode()


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


_ENTRY_TYPES: dict[str, type | tuple[type, ...]] = {
    "window": int,
    "n_vectors": int,
    "dim": int,
    "size": int,
    "max_norm2": (int, float),
}


@dataclass
class Manifest:
    """The parsed ``manifest.json`` of an index set (checked on load: version, keys, types)."""

    store: str
    kind: str
    factory: str
    dim: int | None = None
    mappable: bool | None = None
    windows: dict[int, WindowEntry] = field(default_factory=dict)
    format_version: int = INDEX_FORMAT_VERSION

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Read and check ``directory/manifest.json``; one-line errors name the file and the key."""
        path = directory / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise IndexSetError(f"{path} cannot be read ({e})") from None
        if not isinstance(raw, dict):
            raise IndexSetError(f"{path} is damaged: it holds {type(raw).__name__}, not an object")
        if raw.get("format_version") != INDEX_FORMAT_VERSION:
            raise IndexSetError(
                f"{directory}: index set format {raw.get('format_version')} is not supported "
                f"(this vcfstore reads {INDEX_FORMAT_VERSION}); rebuild it"
            )
        expected: tuple[tuple[str, type], ...] = (("store", str), ("kind", str), ("factory", str), ("windows", dict))
        for key, want in expected:
            if not isinstance(raw.get(key), want):
                raise IndexSetError(f"{path} is damaged: key {key!r} is missing or not a {want.__name__}")
        windows: dict[int, WindowEntry] = {}
        for name, entry in raw["windows"].items():
            w = _window_key(path, name)
            windows[w] = _entry(path, name, entry)
        return cls(
            store=raw["store"],
            kind=raw["kind"],
            factory=raw["factory"],
            dim=raw.get("dim"),
            mappable=raw.get("mappable"),
            windows=windows,
        )

    def save(self, directory: Path) -> None:
        """Write ``manifest.json`` atomically (readers see the old or the new one, never a part)."""
        atomic_write_bytes(directory / MANIFEST, json.dumps(self.to_dict(), indent=1).encode())

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "windows"}
        d["windows"] = {str(w): asdict(e) for w, e in sorted(self.windows.items())}
        return d


def _window_key(path: Path, name: str) -> int:
    try:
        return int(name)
    except ValueError:
        raise IndexSetError(f"{path} is damaged: window key {name!r} is not a window number") from None


def _entry(path: Path, name: str, e: Any) -> WindowEntry:
    if not isinstance(e, dict):
        raise IndexSetError(f"{path} is damaged: window {name} is not an object")
    names = [f.name for f in fields(WindowEntry)]
    for key in names:
        if key not in e:
            raise IndexSetError(f"{path} is damaged: window {name} has no key {key!r}")
        want = _ENTRY_TYPES.get(key, str)
        if not isinstance(e[key], want) or isinstance(e[key], bool):
            raise IndexSetError(f"{path} is damaged: window {name}, key {key!r} has the wrong type")
    return WindowEntry(**{k: e[k] for k in names})


def verify_index_files(directory: Path, manifest: Manifest, windows: Iterable[int] | None = None) -> list[int]:
    """Re-hash index files against the manifest; returns the windows whose file is missing or differs."""
    return [
        w
        for w in (sorted(manifest.windows) if windows is None else windows)
        if not file_intact(directory, manifest.windows[w])
    ]


def file_intact(directory: Path, e: WindowEntry) -> bool:
    """The window's file exists with the size and SHA-256 the manifest records (reads it all)."""
    path = directory / e.file
    return path.is_file() and path.stat().st_size == e.size and file_sha256(path) == e.sha256
