"""One rank of the engine-level distributed test; ``test_distributed.py`` runs it under torchrun.

Also imported by the test itself, which runs the same measurement in one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hesscli.engine.diagonal import exact_diagonal
from hesscli.engine.distributed import leave
from hesscli.engine.gradient import loss_and_gradient
from hesscli.engine.params import list_layers
from hesscli.runs.prepare import Request, operator_for, prepare

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
#: (folder, --max-samples, --micro-batch on every rank, layers whose diagonal is compared)
CASES = (
    ("digits_mlp", 101, 16, None),  # 50 + 51 samples
    ("tiny_tagger", 201, 32, ["mlp.2", "head"]),  # 100 + 101 sequences, 1,017 + 599 tokens
)


def measure(
    folder: str, max_samples: int, micro_batch: int | None, layers: list[str] | None
) -> dict[str, object]:
    """Products, exact layer diagonals, loss and gradient norm, in float64."""
    options = {
        "checkpoint": "model.safetensors",
        "dtype": "float64",
        "max_samples": max_samples,
        "micro_batch": micro_batch,
    }
    prepared = prepare(Request(options=options, cwd=SAMPLES / folder))
    op = operator_for(prepared)
    generator = torch.Generator().manual_seed(0)
    columns = torch.randn(op.size, 6, generator=generator, dtype=torch.float64)
    diagonal = exact_diagonal(op, blocks=layers)
    gradient = loss_and_gradient(
        prepared.problem.model,
        prepared.shard,
        prepared.problem.loss.fn,
        layers=list_layers(prepared.problem.model),
        micro_batch=micro_batch,
        device=prepared.device,
        dtype=prepared.dtype,
        weighting=prepared.weighting,
        group=prepared.group,
    )
    return {
        "product": op.matmat(columns),
        "diagonal": {name: values.clone() for name, values in diagonal.values.items()},
        "methods": dict(diagonal.methods),
        "loss": gradient.loss,
        "grad_norm": gradient.grad_norm,
        "units": prepared.weighting.total,
        "kind": prepared.weighting.kind,
        "shards": prepared.shards,
        "route": op.route.route if op.route else "",
    }


if __name__ == "__main__":
    found = {case[0]: measure(*case) for case in CASES}
    if torch.distributed.get_rank() == 0:
        torch.save(found, sys.argv[1])
    leave()
