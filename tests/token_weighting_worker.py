"""One rank of the causal-LM token-weighting test, which runs it under torchrun.

Also imported by the test, which runs the same measurement in one process:
``python -m torch.distributed.run --nproc-per-node=2 token_weighting_worker.py FOLDER DATA OUT MB``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hesscli.engine.distributed import leave
from hesscli.engine.gradient import loss_and_gradient
from hesscli.engine.params import list_layers
from hesscli.runs.prepare import Request, operator_for, prepare


def measure(folder: Path, data: Path, micro_batch: int | None, **options: object) -> dict:
    """Loss, gradient, three Hessian-vector products and the token count, in float64."""
    settings = {
        "checkpoint": str(folder),
        "data": str(data),
        "dtype": "float64",
        "micro_batch": micro_batch,
        **options,
    }
    prepared = prepare(Request(options=settings, cwd=folder.parent, use_config=False))
    op = operator_for(prepared)
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(op.size, 3, generator=generator, dtype=torch.float64)
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
        "names": list(op.layout.names),
        "vectors": vectors,
        "products": op.matmat(vectors),
        "loss": gradient.loss,
        "grad_norm": gradient.grad_norm,
        "units": prepared.weighting.total,
        "shift": prepared.weighting.shift,
        "shards": prepared.shards,
        "micro_batches": op.num_micro_batches,
    }


if __name__ == "__main__":
    folder, data, out, micro_batch = sys.argv[1:5]
    found = measure(Path(folder), Path(data), int(micro_batch))
    if torch.distributed.get_rank() == 0:
        torch.save(found, out)
    leave()
