"""Token-level cross-entropies of language models, with their closed-form output Hessians.

Hugging Face models return logits ``(b, T, C)``: class (or vocabulary) last, unlike
``F.cross_entropy``'s ``(b, C, T)``. Both losses here are the mean over real target tokens
(labels other than -100), computed in the logits' own dtype: Hugging Face's ``ForCausalLMLoss``
upcasts to float32, so a float64 run through ``model(**batch).loss`` would not be float64.

- :func:`token_cross_entropy` (masked LM, token classification): the logits at position t are
  scored against the label at t.
- :func:`next_token_cross_entropy` (causal LM): the logits at t predict the label at t + 1, so
  the first label of every sequence is no loss term's target and the last position's logits are
  unused. The loss carries ``shift = 1`` (:class:`hesscli.loading.losses.Loss`), so token weighting
  counts ``labels[:, 1:] != -100`` — the tokens the mean is really over.

The output Hessians follow :mod:`hesscli.engine.output_curvature`'s protocol: ``(b, T·C, T·C)``
float64 blocks in the outputs' own layout (index t·C + c). Each position contributes
(diag(p) − ppᵀ)/K, p = softmax of its logits, K the real target tokens of the batch, where its
target is real; positions do not interact.

Example:
    >>> import torch
    >>> logits = torch.zeros(1, 3, 2, dtype=torch.float64)
    >>> labels = torch.tensor([[5, 1, -100]])  # the first label is never a target
    >>> next_token_cross_entropy(logits, labels).item() == torch.log(torch.tensor(2.0)).item()
    True
    >>> next_token_cross_entropy_hessian(logits, labels)[0].diagonal().tolist()
    [0.25, 0.25, 0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hesscli.engine.output_curvature import IGNORE_INDEX


def token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits ``(b, T, C)`` against labels ``(b, T)``, mean over labels ≠ -100."""
    classes = outputs.shape[-1]
    return F.cross_entropy(outputs.reshape(-1, classes), targets.reshape(-1))


def next_token_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Causal-LM loss: logits ``(b, T, V)`` at t against labels ``(b, T)`` at t + 1.

    The mean is over the shifted labels other than -100 (``labels[:, 1:]``).
    """
    vocab = outputs.shape[-1]
    return F.cross_entropy(outputs[:, :-1].reshape(-1, vocab), targets[:, 1:].reshape(-1))


def token_cross_entropy_hessian(
    outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """Output Hessian of :func:`token_cross_entropy`; ``None`` for other shapes."""
    if outputs.ndim != 3 or tuple(targets.shape) != tuple(outputs.shape[:2]):
        return None
    return _token_blocks(outputs, targets != IGNORE_INDEX)


def next_token_cross_entropy_hessian(
    outputs: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor | None:
    """Output Hessian of :func:`next_token_cross_entropy`; ``None`` for other shapes.

    Position t is a loss term when the label at t + 1 is real; the last position never is.
    """
    if outputs.ndim != 3 or tuple(targets.shape) != tuple(outputs.shape[:2]):
        return None
    real = torch.zeros(targets.shape, dtype=torch.bool, device=targets.device)
    real[:, :-1] = targets[:, 1:] != IGNORE_INDEX
    return _token_blocks(outputs, real)


def _token_blocks(logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``(b, T·C, T·C)``: (diag(p) − ppᵀ)/K at every position whose target is real.

    ``F.cross_entropy``'s gradient is 0 when no target is real (its loss is NaN), so K is at
    least 1 here and the Hessian is 0.
    """
    b, positions, classes = logits.shape
    p = torch.softmax(logits.double(), dim=-1)  # (b, T, C)
    scale = real.double() / max(int(real.sum()), 1)
    blocks = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # (b, T, C, C)
    blocks = blocks * scale[..., None, None]
    eye = torch.eye(positions, dtype=blocks.dtype, device=blocks.device)
    dense = torch.einsum("ntcd,tu->ntcud", blocks, eye)  # [n, t, c, u, d] = block·δ_tu
    return dense.reshape(b, positions * classes, positions * classes)
