#!/usr/bin/env bash
# Set up (if needed), lint, and run the test suite: `bash scripts/test.sh [pytest options]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
