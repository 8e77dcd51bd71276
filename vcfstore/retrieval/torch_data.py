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
from vcfstore.memory.lru import LruCache
from vcfstore.memory.window_cache import WindowCache
from vcfstore.store.align import AlignedTarget
from vcfstore.store.masks import MaskSchedule
from vcfstore.store.reader import PanelStore
from vcfstore.store.vocab import layout_tokens

IGNORE_INDEX = -100


class TargetDataset(Dataset):
    """Masked query haplotypes of a target cohort, one item per (sample, window).

    Parameters
    ----------
    target : PanelStore or AlignedTarget
        The cohort: a store with the reference's sites and windows, or a cohort aligned to the
        reference (:class:`~vcfstore.store.align.AlignedTarget`: sites matched by contig,
        position, REF and ALT, swapped alleles recoded, sites it lacks missing).
    schedule : MaskSchedule, optional
        Masks per (window, epoch), drawn from the reference's AF so that queries and the
        reference index of a window are masked identically in every process. Needed in
        ``"train"`` mode.
    reference : PanelStore, optional
        The reference panel (default: ``target``, or the aligned target's reference); its AF
        is the ``af`` of every item.
    mode : {"train", "impute"}
        ``train`` masks the schedule's sites, plus whatever the target lacks; ``impute`` masks
        only what the target lacks (the sites to impute), so no schedule is needed.
    epoch, rate : int, float
        The current epoch and curriculum rate (change with :meth:`set_epoch`).
    budget : MemoryBudget, optional
        Decoded windows are cached under it in each worker.

    Items are dicts: ``hap_1``, ``hap_2`` (masked tokens, int64 [L]), ``label_1``, ``label_2``
    (allele token ids at masked sites where the target's allele is known, -100 elsewhere),
    ``mask`` (bool [L]: the sites masked for both haplotypes), ``af`` (float32 [L]),
    ``window_idx`` and ``sample_idx``.

    On an aligned target, reference sites the target lacks are masked for every item (and have
    no label), and a genotype missing in the input is masked in its haplotype only (its token is
    the mask token; ``mask`` stays the per-site mask). The exact backend retrieves for any
    masks; a FAISS index set must be built with this dataset's masks
    (:meth:`window_mask`), and a haplotype with its own missing genotypes has a mask no index
    was built with, which the FAISS backend refuses (:class:`~vcfstore.errors.StaleIndexError`).
    """

    def __init__(
        self,
        target: PanelStore | AlignedTarget,
        schedule: MaskSchedule | None = None,
        *,
        reference: PanelStore | None = None,
        mode: str = "train",
        epoch: int = 0,
        rate: float = 0.3,
        budget: MemoryBudget | None = None,
    ) -> None:
        if mode not in ("train", "impute"):
            raise ArgumentError(f"mode must be 'train' or 'impute', not {mode!r}")
        if mode == "train" and schedule is None:
            raise ArgumentError("mode='train' masks by a MaskSchedule: pass schedule (or use mode='impute')")
        self.target = target
        self.aligned = target if isinstance(target, AlignedTarget) else None
        if self.aligned is not None:
            if reference is not None and reference is not self.aligned.reference:
                raise ArgumentError("an aligned target brings its reference; do not pass another one")
            self.reference = self.aligned.reference
        else:
            assert isinstance(target, PanelStore)
            self.reference = reference or target
            if self.reference is not target:
                _check_same_sites(target, self.reference)
        self.schedule, self.mode, self.budget = schedule, mode, budget
        # Reference sites the target lacks, once: every item's mask includes its window's part.
        self._site_missing = None if self.aligned is None else self.aligned.site_missing
        self.n_samples = target.n_haplotypes // 2
        self.set_epoch(epoch, rate)
        self._cache: WindowCache | None = None
        self._aligned_windows: LruCache[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def n_windows(self) -> int:
        """The reference's windows: items are numbered ``window * n_samples + sample``."""
        return self.reference.n_windows

    def set_epoch(self, epoch: int, rate: float | None = None) -> None:
        """Move to another epoch (and curriculum rate): masks change, deterministically."""
        self.epoch = epoch
        if rate is not None:
            self.rate = rate

    def __len__(self) -> int:
        return self.n_samples * self.n_windows

    def budget_needs(self) -> int:
        """Bytes a worker needs on top of what it holds when it starts: reading its largest window.

        A window is read packed into the window cache (:meth:`PanelStore.read_peak_bytes`); an
        aligned target's window is held unpacked, with its missing flags. A split
        :class:`MemoryBudget` checks each worker's share against it when the worker starts.
        """
        windows = self.reference.windows
        if self.aligned is not None:
            return int((windows[:, 1] - windows[:, 0]).max()) * self.target.n_haplotypes * 2
        assert isinstance(self.target, PanelStore)  # not aligned: the target is a store with the reference's sites
        return max(self.target.read_peak_bytes(int(a), int(b)) for a, b in windows)

    def window_mask(self, w: int, epoch: int | None = None, rate: float | None = None) -> np.ndarray:
        """bool [max_seq_len]: the sites of window ``w`` masked for every item (at this epoch and rate).

        The masks to build a FAISS index set with for this dataset.
        """
        ref = self.reference
        if self.mode == "train":
            assert self.schedule is not None
            epoch = self.epoch if epoch is None else epoch
            mask = self.schedule.window_mask(ref, w, epoch, self.rate if rate is None else rate)
        else:
            mask = np.zeros(ref.max_seq_len, dtype=bool)
        if self._site_missing is not None:
            sites = ref.window_sites(w)
            mask[1 : len(sites) + 1] |= self._site_missing[sites.start : sites.stop]
        return mask

    # --- checkpointing (torchdata's Stateful protocol) -------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The epoch and curriculum rate, for a checkpoint."""
        return {"epoch": self.epoch, "rate": self.rate}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch and rate of :meth:`state_dict`."""
        self.set_epoch(int(state["epoch"]), float(state["rate"]))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = state["_aligned_windows"] = None
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
        rows = np.array([2 * s, 2 * s + 1])
        ref = self.reference
        mask = self.window_mask(w, epoch, rate)
        if self.aligned is None:
            if self._cache is None:
                self._cache = WindowCache(self.target, self.budget, max_windows=2)  # type: ignore[arg-type]
            complete = self._cache.tokens(w, rows=rows)
            unknown = np.zeros(complete.shape, dtype=bool)
        else:
            alleles, missing = self._aligned_window(w)
            complete = layout_tokens(alleles[rows], ref.max_seq_len, ref.vocab)
            unknown = np.zeros(complete.shape, dtype=bool)
            unknown[:, 1 : missing.shape[1] + 1] = missing[rows]
        hidden = mask[None, :] | unknown  # masked: the window's mask, and each haplotype's missing genotypes
        masked = np.where(hidden, ref.vocab.mask, complete)
        labels = np.where(hidden & ~unknown, complete, IGNORE_INDEX)  # no label where the truth is unknown
        return {
            "hap_1": torch.from_numpy(masked[0]),
            "hap_2": torch.from_numpy(masked[1]),
            "label_1": torch.from_numpy(labels[0]),
            "label_2": torch.from_numpy(labels[1]),
            "mask": torch.from_numpy(mask),
            "af": torch.from_numpy(ref.window_af(w)),
            "window_idx": w,
            "sample_idx": s,
        }

    def _aligned_window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """The aligned target's (alleles, missing) of window ``w`` for every haplotype, cached under the budget."""
        assert self.aligned is not None
        if self._aligned_windows is None:
            self._aligned_windows = LruCache("aligned target windows", self.budget, max_entries=2)
        found = self._aligned_windows.get(w)
        if found is None:
            nbytes = 2 * self.aligned.n_haplotypes * len(self.reference.window_sites(w))
            self._aligned_windows.admit(anon=nbytes, what=f"reading window {w} of the aligned target")
            found = self.aligned.window(w)
            self._aligned_windows.put(w, found, anon=nbytes)
        return found


def _check_same_sites(target: PanelStore, reference: PanelStore) -> None:
    """A target store used as it is must hold the reference's sites (not just its positions) and windows."""
    same = target.n_sites == reference.n_sites
    if same:
        t, r = target.site_table(), reference.site_table()
        same = all(np.array_equal(t[c], r[c]) for c in ("contig", "position", "ref", "alt"))
    if not same:
        raise VcfstoreError(
            "the target and reference stores hold different sites (contig, position, REF or ALT); "
            "align the target first: TargetDataset(AlignedTarget(reference, target), ...)"
        )
    if not np.array_equal(target.windows, reference.windows):
        raise VcfstoreError("the target and reference stores must have the same windows")


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
        return cls(dataset.n_samples, dataset.n_windows, batch_size, dataset=dataset, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a resumed epoch keeps its position; another one starts afresh
            self._resume_at, self._pass_start, self._yielded = 0, 0, 0
        self.epoch = epoch

    def _batches(self, positions: Iterator[int], seed: int, epoch: int) -> Iterator[list[int]]:
        """The epoch's batches at ``positions`` of its order, made as they are needed.

        The order: the windows shuffled, then in each window its samples shuffled and cut into
        batches, every permutation drawn in turn from one generator seeded by (seed, epoch).
        Only the current window's permutation is held (an epoch of 100,000 samples x 331 windows
        would be 33 million items as lists); a position before the current window (the cycle
        that pads a rank's last steps) draws the stream again from the start.
        """
        per_window, b = self._per_window(), self.batch_size
        rng: np.random.Generator | None = None
        windows = samples = np.arange(0)
        drawn = -1  # the window position whose samples' permutation ``samples`` holds
        for j in positions:
            p, c = divmod(j, per_window)
            if rng is None or p < drawn:
                rng = np.random.default_rng([seed, epoch])  # as at iter(): a later set_epoch does not mix orders
                windows = rng.permutation(self.n_windows) if self.shuffle else np.arange(self.n_windows)
                drawn = -1
            while drawn < p:
                samples = rng.permutation(self.n_samples) if self.shuffle else np.arange(self.n_samples)
                drawn += 1
            yield (int(windows[p]) * self.n_samples + samples[c * b : (c + 1) * b]).tolist()

    def __iter__(self) -> Iterator[list[Any]]:
        # A resumed pass starts after the batches taken before the restart, then deals the rest.
        start, self._resume_at = self._resume_at, 0
        left = self._n_batches() - start
        steps = self._steps(left) if left > 0 else 0
        # Cycle from the start when there are fewer batches than ranks x steps.
        batches: Iterator[list[Any]] = self._batches(
            (start + (self.rank + i * self.world_size) % left for i in range(steps)), self.seed, self.epoch
        )
        if self.dataset is not None:
            epoch, rate = self.dataset.epoch, self.dataset.rate  # read in the main process, now
            batches = ([ItemKey(i, epoch, rate) for i in batch] for batch in batches)
        self._pass_start, self._yielded = start, 0
        return self._counted(batches)

    def _counted(self, batches: Iterator[list[Any]]) -> Iterator[list[Any]]:
        for batch in batches:
            self._yielded += 1  # before the yield: a snapshot taken after next() counts this batch
            yield batch

    def _per_window(self) -> int:
        return self.n_samples // self.batch_size if self.drop_last else math.ceil(self.n_samples / self.batch_size)

    def _n_batches(self) -> int:
        """Batches of one epoch, over all ranks."""
        return self._per_window() * self.n_windows

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
