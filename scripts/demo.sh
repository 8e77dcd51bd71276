#!/usr/bin/env bash
# Set up (if needed) and run the demo: `bash scripts/demo.sh [vcfstore demo options]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vcfstore demo "$@"
