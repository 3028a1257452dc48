"""Refuse to spend products on a loss that is not a fixed function of the parameters.

Curvature algorithms assume every product sees the same loss. Dropout in training mode makes
the loss random; BatchNorm in training mode makes it depend on how samples are grouped into
micro-batches (and would overwrite the running statistics). Both are caught by name before any
product is computed, and anything else random in ``forward`` by evaluating the first
micro-batch's loss twice. The data set itself is held in memory, so every pass sees the same
samples.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from hesscli.engine.products import MicroBatchLoss
from hesscli.errors import DeterminismError


def check_modules(model: nn.Module, *, single_batch: bool) -> None:
    """Reject dropout and BatchNorm modules that are in training mode.

    Args:
        model: The prepared model.
        single_batch: Whether the whole data set is one micro-batch (training-mode BatchNorm
            is still refused: it would rewrite its running statistics at every product).
    """
    for name, module in model.named_modules():
        if not module.training:
            continue
        if isinstance(module, _DropoutNd) and module.p > 0:
            raise DeterminismError(
                f"dropout {name or type(module).__name__} (p={module.p}) is active because of "
                "--train-mode, so the loss is random and has no well-defined Hessian",
                "drop --train-mode (eval mode turns dropout off)",
            )
        if isinstance(module, _BatchNorm):
            grouping = "" if single_batch else " and on how samples fall into micro-batches"
            raise DeterminismError(
                f"BatchNorm {name} is in training mode (--train-mode): the loss then depends "
                f"on batch statistics{grouping}, and each product would overwrite its running "
                "statistics",
                "drop --train-mode (eval mode uses the stored running statistics)",
            )


def check_repeatable(mb: MicroBatchLoss) -> None:
    """Evaluate the micro-batch loss twice and require the same value.

    The tolerance allows for non-deterministic GPU reductions (a few ulps), not for sampling.
    """
    with torch.no_grad():
        first = float(mb.loss(mb.variables))
        second = float(mb.loss(mb.variables))
    eps = float(torch.finfo(next(iter(mb.variables.values())).dtype).eps)
    if abs(first - second) > 64 * eps * max(1.0, abs(first)):
        raise DeterminismError(
            f"the loss of the same samples changed between two evaluations ({first!r} then "
            f"{second!r}): the model's forward pass is random",
            "remove the randomness from forward() in eval mode (e.g. noise or sampling), "
            "or gate it on self.training",
        )
