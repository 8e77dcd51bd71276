"""VCF-Bert's samplers and collate: one window at a time, in its item order.

Items are numbered sample-major, ``index = sample * W + window`` (VCF-Bert's). vcfstore's own
:class:`~vcfstore.TargetDataset` numbers them window-major, ``index = window * n_samples +
sample``; both orders group a window's items, which is what keeps the decoded window (and, in
VCF-Bert, its single-slot embedding cache) hot.

* :class:`WindowGroupedSampler` (training, validation): every item once, window after window;
  with ``shuffle`` the window order and the order within each window are shuffled with Python's
  Mersenne Twister seeded with ``seed``, giving VCF-Bert's exact order (it uses the global
  ``random`` module; here a private ``random.Random``, so nothing else shifts it).
* :class:`WindowMajorSampler` (inference): ``s * W + w`` for w = 0..W-1, then s = 0..S-1.
* :func:`collate`: stacks every key but ``window_idx``, ``hap1_nomask`` and ``hap2_nomask``,
  which stay lists (their lengths vary), as VCF-Bert's ``embedding_rag_collate_fn`` does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

LIST_KEYS = ("window_idx", "hap1_nomask", "hap2_nomask")


class WindowGroupedSampler(Sampler[Any]):
    """VCF-Bert's ``WindowGroupedSampler(dataset, shuffle=True, seed=None)``.

    Yields every index of ``dataset`` once, grouped by window (``index % window_count``): with
    ``shuffle=False`` windows 0..W-1 and, within each, samples in ascending order. When the
    dataset is a :class:`~vcfstore.vcfbert.VcfBertDataset`, the indices carry the mask seed and
    rate read from it when iteration starts, so workers mask as the main process does.

    Parameters
    ----------
    dataset
        Has ``window_count`` and ``len``.
    shuffle : bool
    seed : int, optional
        None draws a fresh order every epoch (VCF-Bert: from the unseeded global RNG).
    cumulative_seed : bool
        :meth:`set_epoch` adds the epoch to the *current* seed, as VCF-Bert does (42, 43, 45,
        48, ...), so a resumed run gets other orders than an uninterrupted one. False (the
        default) uses ``seed + epoch``.
    """

    def __init__(self, dataset: Any, shuffle: bool = True, seed: int | None = None, *, cumulative_seed: bool = False):
        self.dataset, self.shuffle = dataset, shuffle
        self.base_seed = self.seed = seed
        self.cumulative_seed = cumulative_seed
        self.num_samples = len(dataset)
        self.num_windows = int(dataset.window_count)

    @property
    def window_groups(self) -> dict[int, range]:
        """Per window, its indices in ascending order: ``w, w + W, w + 2W, ...``."""
        return {w: range(w, self.num_samples, self.num_windows) for w in range(self.num_windows)}

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (no effect without a seed)."""
        if self.seed is None or self.base_seed is None:  # both or neither
            return
        self.seed = self.seed + epoch if self.cumulative_seed else self.base_seed + epoch

    def __iter__(self) -> Iterator[Any]:
        key = getattr(self.dataset, "key", None)
        rng = random.Random(self.seed)
        windows = list(range(self.num_windows))
        if self.shuffle:
            rng.shuffle(windows)
        order: list[int] = []
        for w in windows:
            members = list(range(w, self.num_samples, self.num_windows))
            if self.shuffle:
                rng.shuffle(members)
            order += members
        return iter([key(i) for i in order] if key is not None else order)

    def __len__(self) -> int:
        return self.num_samples


class WindowMajorSampler(Sampler[int]):
    """VCF-Bert's inference order: every sample of window 0, then of window 1, ...: ``s * W + w``."""

    def __init__(self, dataset: Any) -> None:
        self.num_windows = int(dataset.window_count)
        self.num_samples = len(dataset) // self.num_windows

    def __iter__(self) -> Iterator[int]:
        W = self.num_windows
        return (s * W + w for w in range(W) for s in range(self.num_samples))

    def __len__(self) -> int:
        return self.num_samples * self.num_windows


def collate(
    batch_list: list[dict[str, Any]], dataset: Any = None, embedding_layer: Any = None, k_retrieve: int = 1
) -> dict[str, Any]:
    """VCF-Bert's ``embedding_rag_collate_fn``: a dict of stacked tensors, the list keys as lists (CPU only).

    The trailing arguments are accepted and ignored, as VCF-Bert does.
    """
    out: dict[str, Any] = {}
    for key in batch_list[0]:
        values = [item[key] for item in batch_list]
        out[key] = values if key in LIST_KEYS else torch.stack(values)
    return out
