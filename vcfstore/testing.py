"""Helpers for tests and benchmarks: best-of timings, peaks sampled from outside, a memory ceiling.

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

from vcfstore.memory.meters import PeakSampler, StatmMeter


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


def run_measured(
    argv: list[str], *, interval: float = 0.005, timeout: float = 600, env: dict[str, str] | None = None
) -> MeasuredRun:
    """Run ``argv`` and sample its anonymous and resident memory until it exits.

    The peak is measured as the kernel accounts it (``/proc/<pid>/statm``), not by the workload
    itself, so a test or benchmark that asserts a ceiling does not trust the code it checks.
    """
    import subprocess
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, text=True)
        sampler = PeakSampler(proc.pid, interval).start()
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sampler.stop()
        out.seek(0)
        err.seek(0)
        return MeasuredRun(
            proc.returncode, out.read(), err.read(), sampler.peak_anon, sampler.peak_rss, sampler.timeline
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
