"""Closed-form Hessians of common losses with respect to the model outputs.

The fast exact diagonals (:mod:`hesscli.engine.diagonal`) need, for every sample n, the Hessian
H_out,n of the micro-batch's *mean* loss with respect to that sample's outputs. Differentiating
the loss twice for it costs m products (m = outputs per sample) and, through ``torch.func``, a
first-use import of more than a second; the losses below have it in closed form.

A loss function opts in by carrying an attribute ``output_hessian(outputs, targets)`` that
returns the ``(b, m, m)`` float64 blocks (sample n's outputs flattened in their own layout
order), or ``None`` when its closed form does not cover these shapes; :func:`output_hessian_of`
finds it. The engine falls back to autograd for losses without one, and its run-time check
compares the result with a double-backward product either way.

Every formula is the Hessian of the loss *as written* (the batch mean), with the derivative
autograd takes where the loss is not twice differentiable, so that all routes agree:

- cross-entropy on logits x with class labels: (diag(p) − ppᵀ)/K per position, p = softmax(x)
  over the class axis, K the number of targets other than ``ignore_index`` (padding rows are
  zero); with class-probability targets y: (Σ_c y_c)·(diag(p) − ppᵀ)/K, K the positions;
- negative log-likelihood on log-probabilities: 0 (the loss is linear in its input);
- mean squared error: 2/M · I, M the number of output elements of the batch;
- binary cross-entropy on logits: diag(σ(x)(1 − σ(x)))/M;
- Huber with δ = 1: 1/M where 0 < |x − y| < 1, else 0 (autograd differentiates |·| at 0 to 0).

Example:
    >>> import torch
    >>> x = torch.tensor([[0.0, 0.0]])
    >>> cross_entropy_hessian(x, torch.tensor([1]))
    tensor([[[ 0.2500, -0.2500],
             [-0.2500,  0.2500]]], dtype=torch.float64)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hesscli.batches import IGNORE_INDEX

#: ``output_hessian(outputs, targets)`` → ``(b, m, m)`` float64 blocks, or ``None``.
OutputHessian = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]


def output_hessian_of(loss_fn: object) -> OutputHessian | None:
    """The closed-form output Hessian a loss function carries, if any.

    Args:
        loss_fn: Any ``loss_fn(outputs, targets)``; the protocol is an attribute
            ``output_hessian`` with the signature of :data:`OutputHessian`.
    """
    candidate = getattr(loss_fn, "output_hessian", None)
    return candidate if callable(candidate) else None


def cross_entropy_hessian(
    outputs: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor | None:
    """Output Hessian of ``F.cross_entropy(outputs, targets)`` (mean reduction).

    Args:
        outputs: Logits ``(b, C, *positions)``.
        targets: Class labels ``(b, *positions)`` (``ignore_index`` marks padding), or class
            probabilities with the outputs' shape.
        ignore_index: The padding label.

    Returns:
        ``(b, C·T, C·T)``, T the number of positions, or ``None`` for other shapes.
    """
    if outputs.ndim < 2:
        return None
    b, classes = outputs.shape[:2]
    positions = outputs[0, 0].numel()
    p = torch.softmax(outputs.double(), dim=1).reshape(b, classes, positions).transpose(1, 2)
    if targets.is_floating_point():
        if targets.shape != outputs.shape:
            return None
        mass = targets.double().reshape(b, classes, positions).sum(dim=1)  # (b, T)
        count = b * positions
    else:
        if targets.shape != outputs.shape[:1] + outputs.shape[2:]:
            return None
        mass = (targets != ignore_index).reshape(b, positions).double()
        count = int(mass.sum())
    # F.cross_entropy's gradient is 0 when every target is padding (its loss is NaN).
    scale = mass / max(count, 1)
    blocks = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # (b, T, C, C)
    blocks = blocks * scale[..., None, None]
    return _position_blocks(blocks)


def nll_hessian(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Output Hessian of ``F.nll_loss``: zero, the loss being linear in the log-probabilities.

    Args:
        outputs: Log-probabilities ``(b, C, *positions)``.
        targets: Class labels ``(b, *positions)``.
    """
    if outputs.ndim < 2 or targets.shape != outputs.shape[:1] + outputs.shape[2:]:
        return None
    return _zeros(outputs)


def mse_hessian(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Output Hessian of ``(outputs − targets).square().mean()``: 2/M · I.

    Args:
        outputs: ``(b, ...)``.
        targets: Same shape.
    """
    if targets.shape != outputs.shape:
        return None
    return _diagonal(torch.full_like(outputs, 2.0 / outputs.numel(), dtype=torch.float64))


def bce_with_logits_hessian(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Output Hessian of ``F.binary_cross_entropy_with_logits`` (mean): diag(σ(1 − σ))/M.

    Args:
        outputs: Logits ``(b, ...)``.
        targets: Probabilities, same shape.
    """
    if targets.shape != outputs.shape:
        return None
    sigma = torch.sigmoid(outputs.double())
    return _diagonal(sigma * (1 - sigma) / outputs.numel())


def huber_hessian(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Output Hessian of the mean Huber loss with δ = 1: 1/M where 0 < |error| < 1, else 0.

    At a zero error autograd differentiates |·| to 0, so the double-backward Hessian of the
    loss as written is 0 there too; this closed form follows it, so that every route agrees.

    Args:
        outputs: ``(b, ...)``.
        targets: Same shape.
    """
    if targets.shape != outputs.shape:
        return None
    error = (outputs.double() - targets.double()).abs()
    inside = (error > 0) & (error < 1.0)
    return _diagonal(inside.double() / outputs.numel())


def _zeros(outputs: torch.Tensor) -> torch.Tensor:
    m = outputs[0].numel()
    return torch.zeros(outputs.shape[0], m, m, dtype=torch.float64, device=outputs.device)


def _diagonal(values: torch.Tensor) -> torch.Tensor:
    """``(b, m, m)`` diagonal blocks from per-element curvatures ``(b, ...)``."""
    return torch.diag_embed(values.reshape(values.shape[0], -1))


def _position_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """``(b, T, C, C)`` per-position blocks laid out as ``(b, C·T, C·T)``.

    Sample n's outputs ``(C, T)`` flatten to index c·T + t; positions do not interact.
    """
    b, positions, classes, _ = blocks.shape
    eye = torch.eye(positions, dtype=blocks.dtype, device=blocks.device)
    dense = torch.einsum("ntcd,tu->nctdu", blocks, eye)
    return dense.reshape(b, classes * positions, classes * positions)
