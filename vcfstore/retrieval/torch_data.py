"""The PyTorch data path: a (sample, window) dataset, a window-grouped batch sampler, a collate.

Everything here is fork- and spawn-safe: the dataset holds stores by path and opens Zarr lazily
in the process that reads; no FAISS, Zarr or CUDA handle is created before workers start.
Items are numbered window-major (``index = window * n_samples + sample``) so that batches of one
window read the same chunks and hit the same cached window and index.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from vcfstore.errors import ArgumentError, VcfstoreError
from vcfstore.memory.budget import MemoryBudget
from vcfstore.memory.window_cache import WindowCache
from vcfstore.store.masks import MaskSchedule
from vcfstore.store.reader import PanelStore

IGNORE_INDEX = -100


class TargetDataset(Dataset):
    """Masked query haplotypes of a target panel, one item per (sample, window).

    Parameters
    ----------
    target : PanelStore
        The training cohort's panel (the same sites as the reference).
    schedule : MaskSchedule
        Masks per (window, epoch); drawn from the reference's AF so that queries and the
        reference index of a window are masked identically in every process.
    reference : PanelStore, optional
        The reference panel (default: ``target``); its AF is the ``af`` of every item.
    epoch, rate : int, float
        The current epoch and curriculum rate (change with :meth:`set_epoch`).
    budget : MemoryBudget, optional
        Decoded windows are cached under it in each worker.

    Items are dicts: ``hap_1``, ``hap_2`` (masked tokens, int64 [L]), ``label_1``, ``label_2``
    (allele token ids at masked sites, -100 elsewhere), ``mask`` (bool [L]), ``af`` (float32
    [L]), ``window_idx`` and ``sample_idx``.
    """

    def __init__(
        self,
        target: PanelStore,
        schedule: MaskSchedule,
        *,
        reference: PanelStore | None = None,
        epoch: int = 0,
        rate: float = 0.3,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.target, self.reference = target, reference or target
        if self.reference is not target:
            if target.n_sites != self.reference.n_sites or not np.array_equal(
                target.positions, self.reference.positions
            ):
                raise VcfstoreError("the target and reference stores must hold the same sites (positions differ)")
            if not np.array_equal(target.windows, self.reference.windows):
                raise VcfstoreError("the target and reference stores must have the same windows")
        self.schedule, self.budget = schedule, budget
        self.n_samples = target.n_haplotypes // 2
        self.set_epoch(epoch, rate)
        self._cache: WindowCache | None = None

    def set_epoch(self, epoch: int, rate: float | None = None) -> None:
        """Move to another epoch (and curriculum rate): masks change, deterministically."""
        self.epoch = epoch
        if rate is not None:
            self.rate = rate

    def __len__(self) -> int:
        return self.n_samples * self.target.n_windows

    def budget_needs(self) -> int:
        """Bytes a worker needs on top of what it holds when it starts: the largest decoded window.

        A split :class:`MemoryBudget` checks each worker's share against it when the worker starts.
        """
        windows = self.target.windows
        return int((windows[:, 1] - windows[:, 0]).max()) * self.target.n_haplotypes

    # --- checkpointing (torchdata's Stateful protocol) -------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The epoch and curriculum rate, for a checkpoint."""
        return {"epoch": self.epoch, "rate": self.rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch and rate of :meth:`state_dict`."""
        self.set_epoch(int(state["epoch"]), float(state["rate"]))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def __getitem__(self, index: int | ItemKey) -> dict[str, Any]:
        """One item; ``index`` is an int (masked at this dataset's epoch) or an :class:`ItemKey`.

        :class:`WindowGroupedBatchSampler` hands out ItemKeys carrying the epoch and rate of the
        main process, so workers (persistent ones included) hold no epoch state of their own.
        """
        epoch, rate = self.epoch, self.rate
        if isinstance(index, tuple):
            index, epoch, rate = index
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range [0, {len(self)})")
        w, s = divmod(int(index), self.n_samples)
        if self._cache is None:
            self._cache = WindowCache(self.target, self.budget, max_windows=2)
        mask = self.schedule.window_mask(self.reference, w, epoch, rate)
        complete = self._cache.tokens(w, rows=np.array([2 * s, 2 * s + 1]))
        masked = complete.copy()
        masked[:, mask] = self.target.vocab.mask
        labels = np.where(mask[None, :], complete, IGNORE_INDEX)
        return {
            "hap_1": torch.from_numpy(masked[0]),
            "hap_2": torch.from_numpy(masked[1]),
            "label_1": torch.from_numpy(labels[0]),
            "label_2": torch.from_numpy(labels[1]),
            "mask": torch.from_numpy(mask),
            "af": torch.from_numpy(self.reference.window_af(w)),
            "window_idx": w,
            "sample_idx": s,
        }


class ItemKey(NamedTuple):
    """An item index with the epoch and curriculum rate its mask is drawn for."""

    index: int  # type: ignore[assignment]  # shadows tuple.index, as the field name users read
    epoch: int
    rate: float


class WindowGroupedBatchSampler(Sampler[list[Any]]):
    """Batches that never mix windows, all batches of a window together, reshuffled per epoch.

    Window order and the order of samples within a window are drawn from ``seed`` and the
    epoch (:meth:`set_epoch`). Under ``torch.distributed`` (or with ``rank`` and ``world_size``)
    each rank takes every ``world_size``-th batch of the epoch's list, padded by repeating
    batches from the start so that every rank yields exactly ``len(sampler)`` batches, whatever
    the world size (DDP ranks that disagree on the step count hang).

    Made with :meth:`for_dataset`, the sampler yields :class:`ItemKey` items carrying the
    dataset's epoch and rate as set in the main process (:meth:`TargetDataset.set_epoch`), so
    masks follow the epoch in every worker, persistent workers included.

    Mid-epoch resume: :meth:`state_dict` records the epoch, the seed and how many of the epoch's
    batches all ranks together have taken; after :meth:`load_state_dict` the next pass yields
    exactly the batches not yet taken, shared among the ranks of the new job, whatever its
    world size. It follows torchdata's ``Stateful`` protocol, so ``StatefulDataLoader`` saves
    and restores it with the loader, snapshotting it in step with the batches it returned. (A
    plain ``DataLoader`` with workers asks for batches ahead of the training loop, so a state
    taken by hand there counts the prefetched batches as taken.)

    Parameters
    ----------
    n_samples, n_windows : int
        The dataset's shape (items are numbered ``window * n_samples + sample``).
    batch_size : int
    seed : int
    shuffle, drop_last : bool
    rank, world_size : int, optional
        Both or neither. Default: from ``torch.distributed`` when it is initialised, else 0 and 1.
    dataset : TargetDataset, optional
        Whose epoch and rate the yielded items carry (see :meth:`for_dataset`).
    """

    def __init__(
        self,
        n_samples: int,
        n_windows: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        dataset: TargetDataset | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ArgumentError(f"batch_size must be a positive integer, not {batch_size!r}")
        if (rank is None) != (world_size is None):
            raise ArgumentError(
                f"pass rank and world_size together (got rank={rank}, world_size={world_size}), "
                "or neither to take them from torch.distributed"
            )
        if world_size is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            world_size = dist.get_world_size() if initialised else 1
            rank = dist.get_rank() if initialised else 0
        assert rank is not None
        if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise ArgumentError(f"rank {rank} is outside world size {world_size}")
        self.n_samples, self.n_windows, self.batch_size = n_samples, n_windows, batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.rank, self.world_size, self.dataset = rank, world_size, dataset
        self.epoch = 0
        self._resume_at = 0  # batches of this epoch taken before a restart: the next pass skips them
        self._pass_start, self._yielded = 0, 0  # the current pass: where it began, batches this rank took

    @classmethod
    def for_dataset(cls, dataset: TargetDataset, batch_size: int, **kwargs: Any) -> WindowGroupedBatchSampler:
        """A sampler over ``dataset`` whose items carry its epoch and rate."""
        return cls(dataset.n_samples, dataset.target.n_windows, batch_size, dataset=dataset, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a resumed epoch keeps its position; another one starts afresh
            self._resume_at, self._pass_start, self._yielded = 0, 0, 0
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        windows = rng.permutation(self.n_windows) if self.shuffle else np.arange(self.n_windows)
        batches = []
        for w in windows:
            samples = rng.permutation(self.n_samples) if self.shuffle else np.arange(self.n_samples)
            for start in range(0, self.n_samples, self.batch_size):
                chunk = samples[start : start + self.batch_size]
                if len(chunk) < self.batch_size and self.drop_last:
                    continue
                batches.append((w * self.n_samples + chunk).tolist())
        return batches

    def __iter__(self) -> Iterator[list[Any]]:
        # A resumed pass starts after the batches taken before the restart, then deals the rest.
        start, self._resume_at = self._resume_at, 0
        batches = self._all_batches()[start:]
        n = self._steps(len(batches))
        # Cycle from the start when there are fewer batches than ranks x steps.
        mine: list[list[Any]] = (
            [batches[(self.rank + i * self.world_size) % len(batches)] for i in range(n)] if batches else []
        )
        if self.dataset is not None:
            epoch, rate = self.dataset.epoch, self.dataset.rate  # read in the main process, now
            mine = [[ItemKey(i, epoch, rate) for i in batch] for batch in mine]
        self._pass_start, self._yielded = start, 0
        return self._counted(mine)

    def _counted(self, batches: list[list[Any]]) -> Iterator[list[Any]]:
        for batch in batches:
            self._yielded += 1  # before the yield: a snapshot taken after next() counts this batch
            yield batch

    def _n_batches(self) -> int:
        """Batches of one epoch, over all ranks."""
        per_window = (
            self.n_samples // self.batch_size if self.drop_last else math.ceil(self.n_samples / self.batch_size)
        )
        return per_window * self.n_windows

    def _steps(self, n_batches: int) -> int:
        return math.ceil(n_batches / self.world_size)

    def __len__(self) -> int:
        return self._steps(self._n_batches() - self._resume_at)

    # --- checkpointing (torchdata's Stateful protocol) -------------------------------------
    _STATE_VERSION = 1

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands, for a checkpoint: the same on every rank of a job in step.

        ``taken`` counts the epoch's batches that all ranks together have taken (each rank's
        steps times the world size, at most the epoch's batches). Rank 0's state restores a job
        of any world size.
        """
        taken = self._resume_at or min(self._pass_start + self._yielded * self.world_size, self._n_batches())
        state: dict[str, Any] = {
            "version": self._STATE_VERSION,
            "epoch": self.epoch,
            "seed": self.seed,
            "taken": taken,
            "shape": self._shape(),
        }
        if self.dataset is not None:
            state["dataset"] = self.dataset.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the epoch of ``state``: the next pass yields only the batches not yet taken.

        Raises
        ------
        ArgumentError
            If ``state`` is of a sampler over other data or with other batches.
        """
        if state.get("version") != self._STATE_VERSION:
            raise ArgumentError(f"sampler state version {state.get('version')!r} is not {self._STATE_VERSION}")
        if state["shape"] != self._shape():
            raise ArgumentError(
                f"the sampler state is of other batches ({state['shape']}); this sampler has {self._shape()}"
            )
        taken = int(state["taken"])
        if not 0 <= taken <= self._n_batches():
            raise ArgumentError(f"the sampler state has taken {taken} of {self._n_batches()} batches")
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))
        self._resume_at, self._pass_start, self._yielded = taken, taken, 0
        if self.dataset is not None and "dataset" in state:
            self.dataset.load_state_dict(state["dataset"])

    def _shape(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "n_windows": self.n_windows,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch on the CPU (workers never touch CUDA)."""
    return default_collate(items)
