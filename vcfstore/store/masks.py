"""Deterministic masks: one pattern per (window, epoch), the same in every process.

VCF-Bert masks one pattern per (window, epoch) that every query and every reference haplotype
of the window share: a site is masked with probability ``low_af_rate`` (0.7) if its AF is below
``low_af`` (0.05), else at the curriculum rate. Its bugs came from masks drawn from a global RNG
in one process and redrawn differently in DataLoader workers and index builds. Here a mask is a
pure function of (seed, epoch, window, rate) and the window's AF: a private counter-based
generator seeded from those integers, never the global NumPy or torch RNG state.

The uniform draws do not depend on the rate, so masks are nested: a site masked at rate r is
masked at every rate above r.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np

from vcfstore.errors import ArgumentError

if TYPE_CHECKING:
    from vcfstore.store.reader import PanelStore

_SCHEME = "vcfstore-mask-v1"


@dataclass(frozen=True)
class MaskSchedule:
    """Masks as a pure function of (seed, epoch, window, rate).

    Parameters
    ----------
    seed : int
        The experiment's seed.
    low_af : float
        Sites with AF below this are masked at ``low_af_rate`` whatever the curriculum rate.
    low_af_rate : float
        Masking probability of low-frequency sites.
    """

    seed: int
    low_af: float = 0.05
    low_af_rate: float = 0.7

    def site_mask(self, af: np.ndarray, window: int, epoch: int, rate: float) -> np.ndarray:
        """Boolean mask over a window's sites (True = masked), given the sites' AF."""
        _check_rate(rate)
        rng = np.random.Generator(np.random.Philox(key=_key(self.seed, epoch, window)))
        u = rng.random(len(af))
        return u < np.where(np.asarray(af) < self.low_af, self.low_af_rate, rate)

    def window_mask(self, store: PanelStore, window: int, epoch: int, rate: float) -> np.ndarray:
        """Boolean mask over the token positions of ``window``: [max_seq_len], False at SOS/EOS/pad."""
        sites = store.window_sites(window)
        out = np.zeros(store.max_seq_len, dtype=bool)
        out[1 : len(sites) + 1] = self.site_mask(store.af[sites.start : sites.stop], window, epoch, rate)
        return out

    def mask_version(self, epoch: int, rate: float) -> str:
        """A stable identifier of every mask of one epoch, recorded by indexes and caches."""
        _check_rate(rate)
        text = (
            f"{_SCHEME}:seed={self.seed}:epoch={epoch}:rate={float(rate)!r}"
            f":low_af={self.low_af!r}:low_af_rate={self.low_af_rate!r}"
        )
        return "mask:" + hashlib.sha256(text.encode()).hexdigest()[:24]

    def at(self, store: PanelStore, epoch: int, rate: float) -> EpochMasks:
        """The masks of every window of ``store`` at one epoch and rate."""
        return EpochMasks(self, store, epoch, rate)


class EpochMasks(Sequence[np.ndarray]):
    """The per-window token masks of one epoch: ``masks[w]`` is bool [max_seq_len]."""

    def __init__(self, schedule: MaskSchedule, store: PanelStore, epoch: int, rate: float) -> None:
        self.schedule, self.store, self.epoch, self.rate = schedule, store, epoch, rate
        self.mask_version = schedule.mask_version(epoch, rate)

    def __len__(self) -> int:
        return self.store.n_windows

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[w] for w in range(len(self)))

    @overload
    def __getitem__(self, w: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, w: slice) -> list[np.ndarray]: ...
    def __getitem__(self, w: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(w, slice):
            return [self[i] for i in range(*w.indices(len(self)))]
        return self.schedule.window_mask(self.store, w, self.epoch, self.rate)


def masks_version(masks: Sequence[np.ndarray]) -> str:
    """The mask version of a sequence of per-window masks: its own, or a digest of the bits."""
    version = getattr(masks, "mask_version", None)
    if version is not None:
        return str(version)
    h = hashlib.sha256(_SCHEME.encode())
    for m in masks:
        h.update(np.packbits(np.asarray(m, dtype=bool)).tobytes())
    return "mask:" + h.hexdigest()[:24]


def _key(seed: int, epoch: int, window: int) -> int:
    for name, v in (("seed", seed), ("epoch", epoch), ("window", window)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ArgumentError(f"mask {name} must be a non-negative integer, not {v!r}")
    # Philox takes a 128-bit key; hashing keeps distinct triples apart at any magnitude.
    digest = hashlib.blake2b(f"{_SCHEME}:{seed}:{epoch}:{window}".encode(), digest_size=16).digest()
    return int.from_bytes(digest, "little")


def _check_rate(rate: float) -> None:
    if not 0.0 <= float(rate) <= 1.0:
        raise ArgumentError(f"mask rate must be in [0, 1], not {rate}")
