"""Cheap memory measurements of a process: resident, anonymous and file-backed bytes.

Anonymous memory (heap, NumPy arrays, FAISS indexes loaded into RAM) is what can OOM a process;
file-backed resident pages (memory-mapped indexes, Zarr chunks in the page cache) are
reclaimable by the kernel. ``/proc/<pid>/statm`` gives both in one read: ``resident - shared``
is RssAnon (plus the tiny RssShmem). Keeping the file open and re-reading it with ``pread``
costs about a microsecond, so it can run per batch; ``psutil``'s ``memory_full_info`` walks
every mapping (milliseconds with large mappings) and is kept for low-rate sampling.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType

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


class PeakSampler:
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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
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

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sample() is None:
                return
            self._stop.wait(self.interval)

    def start(self) -> PeakSampler:
        self._t0 = time.perf_counter()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="vcfstore-peak-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self.meter.close()

    def __enter__(self) -> PeakSampler:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class PssMeter:
    """Anonymous memory as proportional set size, for forked worker processes.

    ``Pss_Anon`` divides pages shared copy-on-write with the parent among the sharers; it costs
    a walk of the mappings (about 0.5 ms at 600 MB), so it is re-read at most every
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
            self._pss_anon = _pss_anon()
            self._statm_anon, self._last = s.anon, now
        return MemorySample(rss=s.rss, anon=max(0, self._pss_anon + s.anon - self._statm_anon))


def _pss_anon() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1]) * 1024
    raise OSError("no Pss_Anon in /proc/self/smaps_rollup")
