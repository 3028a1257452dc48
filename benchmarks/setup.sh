#!/usr/bin/env bash
# Create the benchmark venv (separate from any dev venv). Idempotent.
# Override the location with BENCH_VENV=/some/path bash benchmarks/setup.sh
set -euo pipefail
VENV="${BENCH_VENV:-/tmp/bench}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip install torch==2.13.0
pip install -e "$ROOT"
pip install pyhessian rich
pip install --no-deps curvlinops-for-pytorch backpack-for-pytorch unfoldNd
pip install einops opt-einsum linear_operator einconv tqdm scipy packaging
# torchvision must be absent and torch must still be the CPU 2.13.0 wheel.
if pip list 2>/dev/null | grep -qi '^torchvision '; then
    echo "ERROR: torchvision got installed into $VENV" >&2
    exit 1
fi
pip list 2>/dev/null | grep -i '^torch '
