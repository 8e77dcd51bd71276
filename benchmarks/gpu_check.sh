#!/usr/bin/env bash
# The GPU checks of vcfstore on a CUDA machine, in under 5 minutes. Installs nothing.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (PYTHON=/path/to/python to choose the interpreter)
#
# Needs: python3 with torch (CUDA build) and numpy; pytest for step 1 (skipped, with a message,
# without it). Not needed: zarr, numcodecs, msprime, FAISS, cyvcf2 (nothing here builds a store).
#   1. the GPU tests: tests/test_scale.py -k cuda (the exact search on CUDA equals the CPU's and
#      a float64 brute force, ties included);
#   2. python -m benchmarks.scale --gpu-only: 48 masked queries, K = 8, against N = 2,000 to
#      1,000,000 synthetic haplotypes of one 1028-site window, timed on CUDA and on the CPU, the
#      indices compared (exit status 1 if they differ). Results: OUT_DIR/scale_gpu.json (+ .png
#      when matplotlib is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-benchmarks/results}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'EOF' || { echo "gpu_check: FAILED: no usable CUDA device (see above); nothing was run" >&2; exit 2; }
import sys
try:
    import numpy, torch
except ImportError as e:
    sys.exit(f"gpu_check: {e}: this check needs torch and numpy")
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
print(f"gpu_check: torch {torch.__version__}, numpy {numpy.__version__}, {torch.cuda.get_device_name()}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
EOF

status=0
start=$(date +%s)
if "$PY" -c "import pytest" 2>/dev/null; then
  echo "== 1. GPU tests"
  timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_scale.py -k cuda -rs || status=1
else
  echo "== 1. GPU tests SKIPPED: pytest is not installed for $PY (step 2 still compares CUDA with the CPU)"
fi

echo "== 2. exact search at scale on CUDA and on the CPU"
timeout 200 "$PY" -m benchmarks.scale --gpu-only --sizes 2000,20000,200000,1000000 --repeat 5 --out "$OUT" || status=1

echo "gpu_check: $([ $status -eq 0 ] && echo PASSED || echo FAILED) in $(( $(date +%s) - start )) s"
exit $status
