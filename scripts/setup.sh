#!/usr/bin/env bash
# Create .venv (once) with CPU PyTorch and vcfstore installed editable, with test extras.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    # The CPU wheel of torch 2.13.0 lies on this kind of machine's disk; plain `torch` would pull
    # a multi-GB CUDA build.
    python -m pip install -q --disable-pip-version-check torch==2.13.0
fi
if ! python -c "import vcfstore, pytest, hypothesis, bio2zarr, matplotlib, pysam, mypy, s3fs, moto, torchdata" 2>/dev/null \
    || [ pyproject.toml -nt .venv/.vcfstore-installed ]; then
    python -m pip install -q --disable-pip-version-check -e ".[test,bench]"
    touch .venv/.vcfstore-installed
fi
