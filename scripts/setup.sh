#!/usr/bin/env bash
# Install Lumina and its dependencies into the current Python environment.
#
# torch goes first and pinned: installed later as a dependency, pip would fetch a multi-GB CUDA
# build. On a CUDA machine, set LUMINA_TORCH to the build you want, e.g.
#   LUMINA_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
# The package is installed without build isolation so its C++/CUDA extension compiles against
# this torch rather than a fresh one pip would resolve for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# shellcheck disable=SC2086  # LUMINA_TORCH may carry pip options
$PY -m pip install --disable-pip-version-check -q ${LUMINA_TORCH:-torch==2.13.0}
$PY -m pip install --disable-pip-version-check -q setuptools wheel pybind11 ninja
$PY -m pip install --disable-pip-version-check -q --no-build-isolation -e ".[dev]"
