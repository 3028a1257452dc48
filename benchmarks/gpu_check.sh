#!/usr/bin/env bash
# One prepared GPU check of hesscli, ≤ 8 minutes on one H100/H200; everything goes to OUTDIR.
#
#   benchmarks/gpu_check.sh OUTDIR              # on the GPU machine (CUDA)
#   benchmarks/gpu_check.sh OUTDIR --device cpu # dry run on a CPU: smaller sizes, ≤ 10 minutes
#
# Assumes Python 3.12 with torch (CUDA), transformers, typer, rich, safetensors, matplotlib,
# pytest and hypothesis, and no network: hesscli is installed from this checkout, PyHessian from
# benchmarks/wheels/ (git-ignored; fill it beforehand with benchmarks/fill_wheels.sh). Steps:
#   install, precision.json (torch.backends as found and as hesscli sets them), the device tests
#   (tests/test_device*.py: float32 on the device against float64 CPU truth, every sample model),
#   bench.json (H·v ÷ gradient by both routes and PyHessian, λmax against PyHessian; BERT-size
#   and ResNet-like), then spectrum/trace/report through the CLI on the random-weight BERT.
# Every step has a time limit inside one overall deadline; a failing step does not stop the next
# ones; steps.tsv records each step's exit code and seconds (124: stopped by its limit).
# PYTHON=... selects the interpreter (default: python3).
set -uo pipefail

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: $0 OUTDIR [--device cpu|cuda]" >&2
    exit 2
fi
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
shift
DEVICE=cuda
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:?--device needs a value}"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT" || exit 2
START=$(date +%s)
if [ "$DEVICE" = cpu ]; then
    BUDGET=590  # the dry run: ≤ 10 minutes on a small CPU
    SMALL=(--small)
    TESTS=(-k "seed_ann or not accuracy")  # the larger sample models need a GPU's speed
    CLI=(--max-samples 4 --layer "encoder.*")  # not the 2M-row embedding table's products
    SPECTRUM=(--max-steps 15)
    TRACE=(--products 8)
    REPORT=(--probes 1 --steps 6 --diag-products 40 --max-steps 10)
    BENCH=(--small --repeats 1)
    BENCH_LIMIT=240
    echo "CPU dry run: smaller sizes, fewer tests and samples; the figures are not a GPU's"
else
    BUDGET=470  # ≤ 8 minutes, a few seconds kept for the summary
    SMALL=()
    TESTS=()
    CLI=()
    SPECTRUM=()
    TRACE=()
    REPORT=()
    BENCH=()
    BENCH_LIMIT=180
fi
# The checkout on the path too: the steps still find hesscli if the editable install fails.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HESSCLI_TEST_DEVICE="$DEVICE" PY ROOT OUT DEVICE
printf "step\trc\tseconds\tlimit\n" >"$OUT/steps.tsv"

# step NAME LIMIT COMMAND...: run with stdout+stderr in NAME.log, within the overall deadline.
# COMMAND may be a function of this script (run by a child bash, since timeout needs a program).
step() {
    local name=$1 limit=$2 left
    shift 2
    left=$((START + BUDGET - $(date +%s)))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        printf "%s\tskipped\t0\t0\n" "$name" >>"$OUT/steps.tsv"
        echo "== $name: skipped (the overall deadline is reached)"
        return
    fi
    echo "== $name (limit ${limit}s)"
    local t0 rc
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then
        timeout --kill-after=5 "$limit" bash -c "$(declare -f "$1"); \"\$@\"" _ "$@" \
            >"$OUT/$name.log" 2>&1
    else
        timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    fi
    rc=$?
    printf "%s\t%s\t%s\t%s\n" "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$OUT/steps.tsv"
    echo "   rc $rc in $(($(date +%s) - t0))s; tail of $name.log:"
    tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
}

# cli NAME ARGS...: a hesscli command on the BERT folder, JSON to NAME.json, stderr to NAME.log.
cli() {
    local name=$1
    shift
    cd "$OUT/bert" && "$PY" -m hesscli "$@" --device "$DEVICE" --json --output "$OUT/$name.json"
}

install() {
    "$PY" -m pip install --no-deps --no-build-isolation -e "$ROOT" || return
    if compgen -G "$ROOT/benchmarks/wheels/*.whl" >/dev/null; then
        "$PY" -m pip install --no-deps --no-index --find-links "$ROOT/benchmarks/wheels" pyhessian
    else
        "$PY" -c "import pyhessian" ||
            echo "no benchmarks/wheels/ and no pyhessian: run benchmarks/fill_wheels.sh first"
    fi
}

precision() {
    "$PY" - "$OUT/precision.json" "$DEVICE" <<'EOF'
import json, sys
import torch
from hesscli.engine.precision import backend_settings, float32_precision

report = {"as_found": backend_settings(), "device": sys.argv[2],
          "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
if torch.cuda.is_available():
    report["gpu"] = torch.cuda.get_device_name(0)
    report["capability"] = torch.cuda.get_device_capability(0)
with float32_precision():
    report["inside_hesscli"] = backend_settings()
with float32_precision(allow_tf32=True):
    report["inside_hesscli_allow_tf32"] = backend_settings()
report["restored"] = backend_settings() == report["as_found"]
json.dump(report, open(sys.argv[1], "w"), indent=2)
print(json.dumps(report["inside_hesscli"]), "restored:", report["restored"])
EOF
}

{ command -v nvidia-smi >/dev/null && nvidia-smi; } >"$OUT/nvidia-smi.txt" 2>&1
step install 90 install
step precision 30 precision
step device_tests 150 "$PY" -m pytest -q -p no:cacheprovider --junitxml "$OUT/device_tests.xml" \
    tests/test_device.py tests/test_device_accuracy.py "${TESTS[@]}"
step bench "$BENCH_LIMIT" "$PY" benchmarks/gpu_bench.py --device "$DEVICE" --out "$OUT" "${BENCH[@]}"
step make_bert 60 "$PY" benchmarks/gpu_bench.py make-bert "$OUT/bert" "${SMALL[@]}"
step cli_spectrum 60 cli cli_spectrum spectrum model.safetensors --top-k 3 --bottom-k 1 \
    "${CLI[@]}" "${SPECTRUM[@]}"
step cli_trace 60 cli cli_trace trace model.safetensors "${CLI[@]}" "${TRACE[@]}"
step cli_report 120 cli cli_report report model.safetensors "${CLI[@]}" "${REPORT[@]}"

TOTAL=$(($(date +%s) - START))
echo "total ${TOTAL}s" | tee "$OUT/total.txt"
column -t "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
