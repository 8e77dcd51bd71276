"""Shared fixtures: simulated panels (msprime), the real 1000 Genomes files (helpers: tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vcfstore as vs
from tests.helpers import REAL
from vcfstore.simulate import simulate_panel
from vcfstore.testing import LocalS3Server, anon_ceiling  # noqa: F401 - a fixture

BUCKET = "panels"  # the bucket the S3 server fixture creates


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL / "reference.vcf.gz").is_file():
        pytest.skip(f"real 1000 Genomes files not found in {REAL}")
    return REAL


@pytest.fixture(scope="session")
def sim_arrays() -> tuple[np.ndarray, np.ndarray]:
    """A small msprime panel: alleles [200 haplotypes, ~2,500 sites] and 1-based positions."""
    ts = simulate_panel(100, 1_000_000, seed=7)
    alleles = ts.genotype_matrix().T.astype(np.uint8)
    positions = ts.tables.sites.position.astype(np.int64) + 1
    return alleles, positions


@pytest.fixture(scope="session")
def sim_store(sim_arrays, tmp_path_factory) -> vs.PanelStore:
    alleles, positions = sim_arrays
    return vs.build_from_arrays(alleles, positions, tmp_path_factory.mktemp("sim") / "store", window_size=300)


@pytest.fixture(scope="session")
def s3():
    """A real S3 server (moto) on 127.0.0.1 with bucket ``BUCKET``, for the session; nothing else is contacted."""
    with pytest.MonkeyPatch.context() as env:
        # Nothing but the local server: no AWS config or credentials files, no metadata service.
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_CONFIG_FILE", "/nonexistent/vcfstore-test")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/vcfstore-test")
        for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.delenv(name, raising=False)
        with LocalS3Server() as server:
            server.create_bucket(BUCKET)
            yield server
