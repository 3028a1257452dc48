"""Dense float64 truth for curvature tests, built independently of the engine.

The truth never comes from ``torch.func.hessian`` (forward-over-reverse, silently wrong through
``layer_norm`` on current torch, pytorch #196700). Hessians are built by double backward on the
*whole* data set in one pass (no micro-batching, no ``functional_call``: the parameters are
swapped into the module in place), and cross-checked by central finite differences of the
gradient. The GGN is Jᵀ H_out J with J and H_out built the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

# The fused CPU attention kernel has no double backward; the math kernel is plain primitives.
MATH_ATTENTION = partial(sdpa_kernel, SDPBackend.MATH)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _locations(model: nn.Module, param: nn.Parameter) -> list[tuple[nn.Module, str]]:
    """Every (module, attribute) holding ``param``: tied weights live in several places."""
    return [
        (module, attr)
        for module in model.modules()
        for attr, p in list(module._parameters.items())
        if p is param
    ]


@contextmanager
def swapped(model: nn.Module, names: list[str], flat: torch.Tensor) -> Iterator[None]:
    """Temporarily make ``model``'s parameters ``names`` views of ``flat`` (keeps its graph).

    A tied parameter is replaced everywhere it is used.
    """
    saved: list[tuple[nn.Module, str, nn.Parameter]] = []
    offset = 0
    try:
        for name in names:
            param = model.get_parameter(name)
            view = flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
            for module, attr in _locations(model, param):
                saved.append((module, attr, param))
                del module._parameters[attr]
                setattr(module, attr, view)
        yield
    finally:
        for module, attr, param in saved:
            delattr(module, attr)
            module.register_parameter(attr, param)


def flat_parameters(model: nn.Module, names: list[str]) -> torch.Tensor:
    """The named parameters concatenated, detached."""
    return torch.cat([model.get_parameter(n).detach().reshape(-1) for n in names])


def loss_at(
    model: nn.Module, names: list[str], inputs: torch.Tensor, targets: torch.Tensor, loss: LossFn
) -> Callable[[torch.Tensor], torch.Tensor]:
    """θ ↦ loss of all samples in one forward pass."""

    def value(flat: torch.Tensor) -> torch.Tensor:
        with swapped(model, names, flat), MATH_ATTENTION():
            return loss(model(inputs), targets)

    return value


def outputs_at(
    model: nn.Module, names: list[str], inputs: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """θ ↦ model outputs of all samples."""

    def value(flat: torch.Tensor) -> torch.Tensor:
        with swapped(model, names, flat), MATH_ATTENTION():
            return model(inputs)

    return value


def gradient(fn: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor) -> torch.Tensor:
    """∇fn(at) by one backward pass."""
    point = at.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(point), point, allow_unused=True)
    return torch.zeros_like(point) if g is None else g


def hessian_columns(
    fn: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """H·V by double backward, column by column, on the whole data set at once."""
    point = at.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(point), point, create_graph=True)
    columns = []
    for k in range(vectors.shape[1]):
        if not g.requires_grad:
            columns.append(torch.zeros_like(point))
            continue
        (hv,) = torch.autograd.grad(g, point, vectors[:, k], retain_graph=True, allow_unused=True)
        columns.append(torch.zeros_like(point) if hv is None else hv)
    return torch.stack(columns, dim=1)


def dense_hessian(fn: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor) -> torch.Tensor:
    """The whole Hessian by double backward (``torch.autograd.functional.hessian``)."""
    return torch.autograd.functional.hessian(fn, at.detach())


def fd_columns(
    fn: Callable[[torch.Tensor], torch.Tensor], at: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """H·V by central differences of the gradient (first derivatives only)."""
    columns = []
    for k in range(vectors.shape[1]):
        v = vectors[:, k]
        h = 1e-5 * max(1.0, float(at.norm())) / float(v.norm())
        columns.append((gradient(fn, at + h * v) - gradient(fn, at - h * v)) / (2 * h))
    return torch.stack(columns, dim=1)


def dense_ggn(
    outputs: Callable[[torch.Tensor], torch.Tensor],
    output_loss: Callable[[torch.Tensor], torch.Tensor],
    at: torch.Tensor,
) -> torch.Tensor:
    """Jᵀ H_out J from the reverse-mode Jacobian of the outputs and the double-backward
    Hessian of the loss with respect to the outputs."""
    out = outputs(at.detach())
    jacobian = torch.autograd.functional.jacobian(outputs, at.detach()).reshape(out.numel(), -1)
    h_out = torch.autograd.functional.hessian(
        lambda o: output_loss(o.reshape(out.shape)), out.detach().reshape(-1)
    )
    return jacobian.T @ h_out @ jacobian


def worst(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """Failure message: relative error and the worst entries."""
    gap = (actual - expected).abs()
    flat = gap.reshape(-1)
    top = torch.topk(flat, min(3, flat.numel())).indices
    rows = [
        f"{tuple(int(i) for i in torch.unravel_index(j, gap.shape))}: "
        f"got {actual.reshape(-1)[j]:.6e}, expected {expected.reshape(-1)[j]:.6e}"
        for j in top
    ]
    return f"relative error {relative(actual, expected):.2e}; worst " + "; ".join(rows)


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / max(‖expected‖, tiny)."""
    scale = max(float(expected.norm()), 1e-300)
    return float((actual - expected).norm()) / scale


def assert_honest_pairs(a: torch.Tensor, run: object, result: object, block: int = 0) -> None:
    """Every reported pair of ``result`` (an ``Extremes`` of ``run``'s ``block``) is honest.

    The Ritz vector is rebuilt from the run's basis; the reported residual must bound its true
    residual ‖A·y − θ·y‖ and be tight (within 1e-6 of it), some eigenvalue of ``a`` must lie
    within the residual (Bauer–Fike), and within the reported error, which is at most the
    residual.
    """
    truth = torch.linalg.eigvalsh(a)
    scale = float(truth.abs().max())
    theta, vectors = torch.linalg.eigh(run.projected(block, 0))  # type: ignore[attr-defined]
    for pair in (*result.top, *result.bottom):  # type: ignore[attr-defined]
        index = int((theta - pair.value).abs().argmin())
        y = run.vectors(block, 0, vectors[:, [index]])[:, 0]  # type: ignore[attr-defined]
        y = y / y.norm()
        true = float(torch.linalg.vector_norm(a @ y - pair.value * y))
        assert true <= pair.residual * (1 + 1e-9) + 1e-13 * scale, (pair, true)
        assert pair.residual <= true * (1 + 1e-6) + 1e-12 * scale, (pair, true)
        distance = float((truth - pair.value).abs().min())
        assert distance <= pair.residual + 1e-12 * scale, (pair, distance)
        assert distance <= pair.error + 1e-12 * scale, (pair, distance)
        assert pair.error <= pair.residual, pair
