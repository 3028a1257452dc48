#!/usr/bin/env bash
# Fill benchmarks/wheels/ (git-ignored, never committed) with the wheels that gpu_check.sh
# installs on a machine without network: PyHessian (pure Python; numpy comes with torch's
# environment). Run it where there is network, before the tree is copied to the GPU machine
# (the device tool carries ignored paths only when named: carry ["benchmarks/wheels"]).
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/wheels"
PY="${PYTHON:-python3}"
mkdir -p "$DIR"
"$PY" -m pip download --no-deps --only-binary=:all: --dest "$DIR" "pyhessian==0.1"
ls -l "$DIR"
