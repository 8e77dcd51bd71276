#!/usr/bin/env bash
# The store, ingest and fork tests against the newest zarr (3.2+ needs Python >= 3.12), next to
# the main suite's zarr 3.1.x on Python 3.11. Skipped, with a message, when no Python 3.12+ is
# installed or its packages cannot be installed; a test failure fails the script.
set -uo pipefail
cd "$(dirname "$0")/.."
py=""
for candidate in python3.13 python3.12 /root/.pyenv/versions/3.13*/bin/python /root/.pyenv/versions/3.12*/bin/python; do
    if "$candidate" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
        py=$candidate
        break
    fi
done
if [ -z "$py" ]; then
    echo "zarr-latest: no Python >= 3.12 here; skipped"
    exit 0
fi
venv=.venv-zarr-latest
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv" || { echo "zarr-latest: cannot create a venv; skipped"; exit 0; }
fi
# No torch here: these tests do not need it, and PyPI's default torch is a multi-GB CUDA build.
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "zarr>=3.2" numcodecs numpy psutil cyvcf2 \
        msprime click tqdm rich pytest hypothesis bio2zarr pysam \
    || ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e .; then
    echo "zarr-latest: packages could not be installed; skipped"
    exit 0
fi
"$venv/bin/python" -c 'import sys, zarr; print(f"zarr-latest: Python {sys.version.split()[0]}, zarr {zarr.__version__}")'
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_store.py tests/test_ingest.py tests/test_fork.py \
    tests/test_build_process.py tests/test_integrity.py tests/test_panels.py tests/test_align.py tests/test_vcf_text.py
