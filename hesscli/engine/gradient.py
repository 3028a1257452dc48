"""Loss and gradient over the whole data set: the sanity check before any curvature run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hesscli.batches import Dataset
from hesscli.engine.distributed import SINGLE, Group
from hesscli.engine.functional import (
    batch_loss,
    micro_batches,
    to_device,
    trainable_parameters,
)
from hesscli.engine.params import Layer
from hesscli.engine.precision import float32_precision
from hesscli.engine.weighting import Weighting
from hesscli.errors import NumericalError


@dataclass(frozen=True)
class LossGradient:
    """Mean loss and gradient norms at the checkpoint.

    Attributes:
        loss: L(θ), the mean over all samples.
        grad_norm: ‖∇L(θ)‖₂ over all trainable parameters.
        layer_grad_norms: ‖∇L‖₂ restricted to each layer's trainable parameters.
        micro_batches: Number of micro-batches evaluated.
        seconds: Wall time of the pass.
    """

    loss: float
    grad_norm: float
    layer_grad_norms: dict[str, float]
    micro_batches: int
    seconds: float


def loss_and_gradient(
    model: nn.Module,
    dataset: Dataset,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    layers: list[Layer],
    micro_batch: int | None,
    device: torch.device,
    dtype: torch.dtype,
    weighting: Weighting | None = None,
    group: Group = SINGLE,
    allow_tf32: bool = False,
) -> LossGradient:
    """One forward/backward pass over ``dataset``, micro-batches weighted by uⱼ/U.

    ``weighting`` and ``group`` are the operator's (see :class:`CurvatureOperator`): with
    several ranks, ``dataset`` is this rank's shard and the sums run over every rank. The
    pass runs in true float32 unless ``allow_tf32`` (see :mod:`hesscli.engine.precision`).

    Raises:
        NumericalError: when the loss or a gradient is NaN/Inf, naming the micro-batch or the
            parameters concerned.
    """
    start = time.perf_counter()
    params = {k: v.requires_grad_(True) for k, v in trainable_parameters(model).items()}
    loss_of = batch_loss(model, loss_fn)
    total = torch.zeros((), device=device, dtype=dtype)
    grads = {k: torch.zeros_like(v) for k, v in params.items()}
    count = 0
    with float32_precision(allow_tf32):  # true float32 unless opted in; restored
        for first, part, weight in micro_batches(dataset, micro_batch, weighting):
            count += 1
            value = loss_of(params, to_device(part, device=device, dtype=dtype))
            if not torch.isfinite(value):
                where = f"{first}-{first + part.size - 1}"
                raise NumericalError(
                    f"the loss is {float(value.detach())} on samples {where}",
                    "check those samples and the checkpoint's weights",
                )
            pieces = torch.autograd.grad(value * weight, list(params.values()), allow_unused=True)
            for (_name, grad), piece in zip(grads.items(), pieces, strict=True):
                if piece is not None:
                    grad.add_(piece)
            total += value.detach() * weight
    group.sum_(total)
    for grad in grads.values():
        group.sum_(grad)
    bad = [name for name, grad in grads.items() if not torch.isfinite(grad).all()]
    if bad:
        raise NumericalError(
            f"the gradient is NaN/Inf in {', '.join(bad[:6])}",
            "the loss is not differentiable there; check the model and the checkpoint",
        )
    squares = {name: float(grad.double().square().sum()) for name, grad in grads.items()}
    layer_norms = {
        layer.name: sum(squares.get(p, 0.0) for p in layer.parameters) ** 0.5 for layer in layers
    }
    return LossGradient(
        loss=float(total),
        grad_norm=sum(squares.values()) ** 0.5,
        layer_grad_norms=layer_norms,
        micro_batches=count,
        seconds=time.perf_counter() - start,
    )
