#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the default test suite: CPU only; markers gpu, slow and
# slurm are excluded by pyproject's addopts (run them with e.g. `pytest -m slurm`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q "$@"
