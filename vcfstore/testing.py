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
import json
import os
import socket
import subprocess
import sys
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


class LocalS3Server:
    """A real S3-compatible server (moto in server mode) on 127.0.0.1, for tests and benchmarks.

    Started as a subprocess on a free port with AWS authentication on: requests must be signed
    with the keys of the IAM user created at start (``key``, ``secret``), so wrong credentials are
    refused as by S3. Use as a context manager (the server stops on exit) or call :meth:`stop`.
    Needs ``moto[server]`` (the ``test`` extra).
    """

    _AUTH_FREE_SETUP_CALLS = 3  # create_user, put_user_policy, create_access_key; signed from then on

    def __init__(self, start_timeout: float = 30.0) -> None:
        import boto3

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(self._AUTH_FREE_SETUP_CALLS))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the moto S3 server did not start on port {self.port}") from None
                time.sleep(0.05)
        iam = boto3.client("iam", **self._client_kwargs("setup", "setup"))
        iam.create_user(UserName="vcfstore")
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="vcfstore", PolicyName="s3", PolicyDocument=json.dumps(policy))
        keys = iam.create_access_key(UserName="vcfstore")["AccessKey"]
        self.key, self.secret = keys["AccessKeyId"], keys["SecretAccessKey"]

    def _client_kwargs(self, key: str, secret: str) -> dict[str, str]:
        return {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": key,
            "aws_secret_access_key": secret,
            "region_name": "us-east-1",
        }

    def storage_options(self, *, key: str | None = None, secret: str | None = None, **extra: object) -> dict:
        """fsspec ``storage_options`` for this server (its own credentials unless others are given)."""
        return {
            "key": key or self.key,
            "secret": secret or self.secret,
            "endpoint_url": self.endpoint,
            "client_kwargs": {"region_name": "us-east-1"},
            **extra,
        }

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", **self._client_kwargs(self.key, self.secret)).create_bucket(Bucket=name)

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
