"""VCF-Bert's masks: its curriculum, and its AF-guided window masks drawn its way.

A VCF-Bert window mask is one pattern per (window, seed) that every query and every reference
haplotype of the window share: a site is masked with probability 0.7 if its global AF is below
0.05, else at the curriculum rate (0.30, 0.40, ... 0.80, one level up every two epochs). The
training seed is the epoch, the validation seed is 2024 at level 4 (rate 0.70).

Two recipes with one signature, ``site_mask(af, window, epoch, rate)`` (``epoch`` is the seed):

* :class:`vcfstore.MaskSchedule` (the default): vcfstore's counter-based generator;
* :class:`VcfBertMasks`: VCF-Bert's draws, bit for bit: ``np.random.seed(seed * 10000 + window)``
  then one ``np.random.random(n)``, for users resuming a VCF-Bert checkpoint. It draws from a
  private ``RandomState`` with that seed (the same Mersenne Twister stream), so the global NumPy
  RNG is never touched and every worker draws the same mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vcfstore.errors import ArgumentError

CURRICULUM_RATES = (0.30, 0.40, 0.50, 0.60, 0.70, 0.80)
"""VCF-Bert's masking rates by curriculum level (``TrainDataset.__mask_rate``)."""
EPOCHS_PER_LEVEL = 2  # its trainer calls add_level() after every second epoch
VALIDATION_SEED = 2024
VALIDATION_LEVEL = 4  # its driver calls add_level() four times on the validation set: rate 0.70
_SEED_STRIDE = 10_000  # VCF-Bert seeds window w of seed s with s * 10000 + w


def curriculum_level(epoch: int, n_levels: int = len(CURRICULUM_RATES)) -> int:
    """The curriculum level VCF-Bert's trainer is at during ``epoch`` (also after a resume)."""
    if epoch < 0:
        raise ArgumentError(f"epoch must be non-negative, not {epoch}")
    return min(epoch // EPOCHS_PER_LEVEL, n_levels - 1)


@dataclass(frozen=True)
class VcfBertMasks:
    """VCF-Bert's AF-guided masks, drawn exactly as VCF-Bert draws them.

    Parameters
    ----------
    low_af, low_af_rate : float
        Sites with AF below ``low_af`` are masked with probability ``low_af_rate``.
    af_offset : bool
        Reproduce VCF-Bert's off-by-one: it reads a window's AF from the padded array, so site
        ``i`` gets the masking probability of site ``i - 1`` and site 0 always counts as rare.
        False (the default) gives every site its own AF, as VCF-Bert's authors meant.
    """

    low_af: float = 0.05
    low_af_rate: float = 0.7
    af_offset: bool = False

    def site_mask(self, af: np.ndarray, window: int, epoch: int, rate: float) -> np.ndarray:
        """Boolean mask over a window's sites (True = masked); ``epoch`` is VCF-Bert's seed."""
        if not 0.0 <= float(rate) <= 1.0:
            raise ArgumentError(f"mask rate must be in [0, 1], not {rate}")
        seed = int(epoch) * _SEED_STRIDE + int(window)
        if epoch < 0 or window < 0 or seed >= 2**32:
            raise ArgumentError(f"VCF-Bert's mask seed {epoch} * 10000 + {window} must lie in [0, 2**32)")
        af = np.asarray(af, dtype=np.float64)
        if self.af_offset:
            af = np.concatenate([[0.0], af[:-1]])
        probs = np.where(af < self.low_af, self.low_af_rate, float(rate))
        return np.random.RandomState(seed).random_sample(len(af)) < probs
