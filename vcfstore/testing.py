"""Helpers for tests and benchmarks: best-of timings, peaks sampled from outside, a memory ceiling.

``run_measured(argv, tree=True)`` also samples the summed ``Pss_Anon`` of the process and its
DataLoader workers (:class:`~vcfstore.memory.meters.TreePeakSampler`).

``anon_ceiling`` is a pytest fixture (``pytest -p vcfstore.testing`` or a conftest import):
``with anon_ceiling(n): ...`` fails if the block raises the process's anonymous memory by n
bytes or more, sampled by a background thread (RssAnon from ``/proc/self/statm``), never from
``ru_maxrss`` or ``VmHWM``, which count mapped file pages.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vcfstore.memory.meters import PeakSampler, StatmMeter, TreePeakSampler


def best_time(fn: Callable[[], object], repeat: int = 7) -> float:
    """Best wall time of ``repeat`` calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@dataclass(frozen=True)
class MeasuredRun:
    """A finished subprocess with the peaks sampled from outside while it ran."""

    returncode: int
    stdout: str
    stderr: str
    peak_anon: int
    peak_rss: int
    timeline: list[tuple[float, int, int]]
    peak_tree_anon: int = 0
    """Highest summed ``Pss_Anon`` of the process and its descendants (``tree=True``)."""
    peak_root_pss_anon: int = 0
    """Highest ``Pss_Anon`` of the process itself (``tree=True``)."""
    tree_processes: int = 0
    """Most processes of the tree seen at once (``tree=True``)."""


def run_measured(
    argv: list[str],
    *,
    interval: float = 0.005,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    tree: bool = False,
    tree_interval: float = 0.01,
) -> MeasuredRun:
    """Run ``argv`` and sample its anonymous and resident memory until it exits.

    The peak is measured as the kernel accounts it (``/proc/<pid>/statm``), not by the workload
    itself, so a test or benchmark that asserts a ceiling does not trust the code it checks.
    With ``tree=True`` the summed ``Pss_Anon`` of the process and its descendants (DataLoader
    workers) is sampled too, every ``tree_interval`` seconds.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, text=True)
        sampler = PeakSampler(proc.pid, interval).start()
        tree_sampler = TreePeakSampler(proc.pid, tree_interval).start() if tree else None
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sampler.stop()
            if tree_sampler is not None:
                tree_sampler.stop()
        out.seek(0)
        err.seek(0)
        return MeasuredRun(
            proc.returncode,
            out.read(),
            err.read(),
            sampler.peak_anon,
            sampler.peak_rss,
            sampler.timeline,
            peak_tree_anon=tree_sampler.peak_total if tree_sampler else 0,
            peak_root_pss_anon=tree_sampler.peak_root if tree_sampler else 0,
            tree_processes=tree_sampler.max_processes if tree_sampler else 0,
        )


@contextlib.contextmanager
def anon_growth_below(nbytes: float) -> Iterator[PeakSampler]:
    """Assert that the block raises this process's anonymous memory by less than ``nbytes``."""
    base = StatmMeter().read().anon
    with PeakSampler(interval=0.001) as sampler:
        yield sampler
    grew = sampler.peak_anon - base
    assert grew < nbytes, f"anonymous memory grew by {grew / 1e6:.1f} MB, more than {nbytes / 1e6:.1f} MB"


def _fixture() -> Callable[[float], contextlib.AbstractContextManager[PeakSampler]]:
    return anon_growth_below


try:  # the fixture exists only where pytest is installed
    import pytest

    anon_ceiling = pytest.fixture(name="anon_ceiling")(_fixture)
except ImportError:  # pragma: no cover - pytest is a test dependency
    pass
