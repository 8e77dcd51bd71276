"""Cheap memory measurements of a process: resident, anonymous and file-backed bytes.

Anonymous memory (heap, NumPy arrays, FAISS indexes loaded into RAM) is what can OOM a process;
file-backed resident pages (memory-mapped indexes, Zarr chunks in the page cache) are
reclaimable by the kernel. ``/proc/<pid>/statm`` gives both in one read: ``resident - shared``
is RssAnon (plus the tiny RssShmem). Keeping the file open and re-reading it with ``pread``
costs about a microsecond, so it can run per batch; ``psutil``'s ``memory_full_info`` walks
every mapping (milliseconds with large mappings) and is kept for low-rate sampling.

A process tree (the main process and its DataLoader workers) is measured as the sum of each
process's ``Pss_Anon`` (:func:`tree_pss_anon`, :class:`TreePeakSampler`): pages shared
copy-on-write after a fork count once across the tree.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class MemorySample:
    """One reading, in bytes."""

    rss: int
    anon: int

    @property
    def file(self) -> int:
        """Resident file-backed (and shared) bytes: mapped files and shared memory."""
        return self.rss - self.anon


class StatmMeter:
    """Reads ``/proc/<pid>/statm`` through a file descriptor kept open (about 1 us a read).

    The descriptor is reopened after a fork, so a meter created in a parent process measures the
    process that calls it (``pid=None``).
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._owner: int | None = None

    def _open(self) -> int:
        if self._fd is None or self._owner != os.getpid():
            path = f"/proc/{'self' if self.pid is None else self.pid}/statm"
            self._fd = os.open(path, os.O_RDONLY)
            self._owner = os.getpid()
        return self._fd

    def read(self) -> MemorySample:
        """The process's resident and anonymous bytes now."""
        fields = os.pread(self._open(), 128, 0).split()
        rss, shared = int(fields[1]) * PAGE, int(fields[2]) * PAGE
        return MemorySample(rss=rss, anon=rss - shared)

    def close(self) -> None:
        if self._fd is not None and self._owner == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class _BackgroundSampler:
    """Calls :meth:`sample` every ``interval`` seconds in a daemon thread until stopped or it returns None."""

    interval: float
    _thread_name = "vcfstore-sampler"

    def sample(self) -> object | None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sample() is None:
                return
            self._stop.wait(self.interval)

    def start(self) -> Self:
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class PeakSampler(_BackgroundSampler):
    """A background thread that samples a process's memory and keeps the peaks.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. Sampling another
    process's ``pid`` measures a workload from outside, as the budget tests do.

    Attributes
    ----------
    peak_anon, peak_rss : int
        Highest anonymous and resident bytes seen.
    samples : int
        Number of readings taken.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.005) -> None:
        self.meter = StatmMeter(pid)
        self.interval = interval
        self.peak_anon = 0
        self.peak_rss = 0
        self.samples = 0
        self.timeline: list[tuple[float, int, int]] = []
        self._t0 = 0.0

    def sample(self) -> MemorySample | None:
        """Take one reading now (None once the process is gone)."""
        try:
            s = self.meter.read()
        except (OSError, IndexError, ValueError):  # the watched process exited
            return None
        self.peak_anon = max(self.peak_anon, s.anon)
        self.peak_rss = max(self.peak_rss, s.rss)
        self.samples += 1
        self.timeline.append((time.perf_counter() - self._t0, s.rss, s.anon))
        return s

    _thread_name = "vcfstore-peak-sampler"

    def start(self) -> Self:
        self._t0 = time.perf_counter()
        return super().start()

    def stop(self) -> None:
        super().stop()
        self.meter.close()


class PssMeter:
    """Anonymous memory as proportional set size, for forked worker processes.

    ``Pss_Anon`` divides pages shared copy-on-write with the parent among the sharers; it costs
    a walk of the mappings (0.5 ms at 600 MB of heap; 3-10 ms with torch's libraries mapped,
    measured here on a loaded two-core machine), so it is re-read at most every
    ``interval`` seconds and the cheap statm reading tracks the change in between.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.statm = StatmMeter()
        self._last = -1.0
        self._pss_anon = 0
        self._statm_anon = 0

    def read(self) -> MemorySample:
        now = time.monotonic()
        s = self.statm.read()
        if now - self._last >= self.interval:
            self._pss_anon = pss_anon()
            self._statm_anon, self._last = s.anon, now
        return MemorySample(rss=s.rss, anon=max(0, self._pss_anon + s.anon - self._statm_anon))


def pss_anon(pid: int | str = "self") -> int:
    """``Pss_Anon`` of a process, in bytes, from ``/proc/<pid>/smaps_rollup`` (a walk of its mappings)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no Pss_Anon in /proc/{pid}/smaps_rollup")


def descendants(pid: int) -> list[int]:
    """The pids of a process's children, grandchildren and so on (DataLoader workers and theirs).

    Read from ``/proc/<pid>/task/<tid>/children`` of every thread (a worker is the child of the
    thread that started it; a few microseconds), with ``psutil`` (a scan of /proc) where the
    kernel lacks those files.
    """
    if not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children"):
        import psutil

        try:
            return [c.pid for c in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:  # the process exited
            return []
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:  # the process exited
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:  # the thread ended
                continue
            out += kids
            todo += kids
    return out


@dataclass(frozen=True)
class TreeSample:
    """Proportional anonymous memory of a process tree: ``Pss_Anon`` by pid, in bytes.

    ``Pss_Anon`` divides each page shared copy-on-write among the processes that map it, so the
    total counts every page of the tree once: the figure the kernel's OOM accounting of a job
    (its cgroup) sees, unlike summed RSS, which counts a forked worker's inherited pages again.
    """

    root: int
    by_pid: dict[int, int]

    @property
    def total(self) -> int:
        return sum(self.by_pid.values())

    @property
    def root_anon(self) -> int:
        """The root process's own share."""
        return self.by_pid.get(self.root, 0)

    @property
    def others(self) -> int:
        """Everything but the root process (its workers)."""
        return self.total - self.root_anon


def tree_pss_anon(pid: int | None = None) -> TreeSample:
    """``Pss_Anon`` of ``pid`` (default: this process) and every descendant; exited ones are skipped."""
    root = os.getpid() if pid is None else pid
    by_pid = {}
    for p in (root, *descendants(root)):
        try:
            by_pid[p] = pss_anon(p)
        except (OSError, ValueError):  # exited between listing and reading, or a zombie
            continue
    return TreeSample(root, by_pid)


class TreePeakSampler(_BackgroundSampler):
    """A background thread that samples a process tree's summed ``Pss_Anon`` and keeps the peaks.

    Measures a workload and its DataLoader workers from outside (as the budget tests do): one
    figure for the run, with shared copy-on-write pages counted once.

    Attributes
    ----------
    peak_total : int
        Highest summed ``Pss_Anon`` of the tree seen in one sample.
    peak_root : int
        Highest ``Pss_Anon`` of the root process alone.
    peak_by_pid : dict
        Highest ``Pss_Anon`` of each process seen.
    max_processes : int
        Most processes seen in one sample.
    samples : int
    """

    def __init__(self, pid: int | None = None, interval: float = 0.01) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.peak_total = 0
        self.peak_root = 0
        self.peak_by_pid: dict[int, int] = {}
        self.max_processes = 0
        self.samples = 0

    def sample(self) -> TreeSample | None:
        """Take one reading now (None once the root process is gone)."""
        s = tree_pss_anon(self.pid)
        if self.pid not in s.by_pid:
            return None
        self.peak_total = max(self.peak_total, s.total)
        self.peak_root = max(self.peak_root, s.root_anon)
        for p, v in s.by_pid.items():
            self.peak_by_pid[p] = max(self.peak_by_pid.get(p, 0), v)
        self.max_processes = max(self.max_processes, len(s.by_pid))
        self.samples += 1
        return s

    _thread_name = "vcfstore-tree-sampler"
