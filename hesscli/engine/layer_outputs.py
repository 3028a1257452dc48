"""A layer's weight diagonal from the loss's curvature with respect to that layer's output.

The fast exact routes of :mod:`hesscli.engine.diagonal` see the model from one ``Linear``
layer: one forward pass captures the layer's input a and output z and keeps the model outputs'
graph back to a zero leaf added to z, so that backward passes run through the downstream network
alone. From there, the curvature C_z of the loss with respect to z comes either as a Gauss–Newton
factor (output Hessians and m pullbacks) or as output-space products, and the weight and bias
diagonals follow from C_z and a. Each route compares its C_z·u with a true double-backward
product on the first micro-batch and raises :class:`Unsupported` where it does not hold;
:mod:`hesscli.engine.diagonal` chooses among the routes and then takes the next one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from hesscli.engine.device_memory import is_out_of_memory
from hesscli.engine.functional import Params, call_model
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.output_curvature import output_hessian_of
from hesscli.engine.products import MicroBatchLoss
from hesscli.engine.routes import (
    FORWARD,
    REVERSE,
    agreement_tolerance,
    build,
    relative_difference,
)
from hesscli.errors import NumericalError

#: The variable of a :class:`LayerOutputLoss`: the perturbation added to the layer's output.
DELTA = "output"


@dataclass(frozen=True)
class LayerOutputLoss(MicroBatchLoss):
    """A micro-batch's loss as a function of a perturbation added to one module's output."""

    module: nn.Module = field(default_factory=nn.Identity)

    def outputs(self, variables: Params) -> torch.Tensor:
        """Model outputs with ``variables[DELTA]`` added to the module's output."""
        delta = variables[DELTA]
        handle = self.module.register_forward_hook(lambda _m, _a, out: out + delta)
        try:
            return call_model(self.model, self.fixed, self.batch.inputs)
        finally:
            handle.remove()


class Unsupported(Exception):
    """The fast route does not apply to this layer (the message says why)."""


class Traced(NamedTuple):
    """One forward pass of a micro-batch, seen from one layer.

    Attributes:
        a: The layer's input (detached).
        z: The layer's output (detached).
        outputs: The model outputs, with their graph back to ``delta``.
        delta: A zero leaf added to the layer's output: backward passes from ``outputs`` to it
            run through the downstream network alone (the parameters are held fixed).
    """

    a: torch.Tensor
    z: torch.Tensor
    outputs: torch.Tensor
    delta: torch.Tensor


def capture(mb: LayerOutputLoss) -> Traced:
    """The layer's input and output on this micro-batch, and the model outputs' graph from it.

    One forward pass serves the fast routes' backward passes and their check.

    Raises:
        Unsupported: The layer does not run exactly once, or has no leading sample axis.
    """
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(out, requires_grad=True)
        seen.append((args[0].detach(), out.detach(), delta))
        return out + delta

    handle = mb.module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            outputs = call_model(mb.model, mb.fixed, mb.batch.inputs)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise Unsupported(f"the layer runs {len(seen)} times per forward pass")
    a, z, delta = seen[0]
    traced = Traced(a, z, outputs, delta)
    if traced.z.ndim < 2 or traced.z.shape[0] != mb.batch.size:
        raise Unsupported("the layer's output has no leading sample axis")
    return traced


def _check(
    op: CurvatureOperator,
    mb: LayerOutputLoss,
    traced: Traced,
    seed: int,
    factored: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Compare the fast route's C_z·u with a true product by double backward.

    Double backward through the loss as written is independent of the closed-form output
    Hessians, the factorisation and the forward-mode products of the fast routes, so agreement
    checks the route as well as the assumptions (independent samples, and for the Gauss–Newton
    factor no curvature of the downstream network's own).
    """
    z = traced.z
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z.device, z.dtype)
    try:
        true = _double_backward_product(op.kind, mb, traced, u)
    except RuntimeError as exc:  # no double backward through the downstream network
        if is_out_of_memory(exc):
            raise
        raise Unsupported(f"no double-backward check product ({exc})") from exc
    op.counters.check_products += 1
    gap, _ = relative_difference({DELTA: factored(u)}, {DELTA: true})
    if not gap <= 10 * agreement_tolerance(op.dtype):
        raise Unsupported(f"output-curvature check failed (relative difference {gap:.1e})")


def _double_backward_product(
    kind: str, mb: LayerOutputLoss, traced: Traced, u: torch.Tensor
) -> torch.Tensor:
    """C_z·u, the curvature of the loss w.r.t. the layer's output z, by reverse mode only.

    Every derivative is that of a scalar (an inner product): ``torch.autograd.grad`` given an
    explicit ``grad_outputs`` tensor imports sympy on first use (over half a second).
    """
    outputs, delta = traced.outputs, traced.delta
    with torch.enable_grad():
        if kind == "hessian":
            g = _grad(mb.output_loss(outputs), delta, create_graph=True)  # ∇L
            return _grad((g * u).sum(), delta)  # H·u = ∇⟨∇L, u⟩
        dummy = torch.zeros_like(outputs, requires_grad=True)
        transposed = _grad((outputs * dummy).sum(), delta, create_graph=True)  # Jᵀw, linear in w
        ju = _grad((transposed * u).sum(), dummy)  # u → J·u
        leaf = outputs.detach().requires_grad_(True)
        output_gradient = _grad(mb.output_loss(leaf), leaf, create_graph=True)
        hju = _grad((output_gradient * ju).sum(), leaf)  # → H_out·J·u
        return _grad((outputs * hju).sum(), delta)  # → Jᵀ·H_out·J·u


def _grad(scalar: torch.Tensor, leaf: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """∂scalar/∂leaf, zero where the scalar does not depend on the leaf."""
    if not scalar.requires_grad:
        return torch.zeros_like(leaf)
    (g,) = torch.autograd.grad(
        scalar, leaf, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    return torch.zeros_like(leaf) if g is None else g


def _output_hessians(mb: LayerOutputLoss, outputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-sample Hessians of the micro-batch loss w.r.t. the outputs: ``(b, m, m)`` float64.

    From the loss's closed form when it carries one (:mod:`hesscli.engine.output_curvature`),
    else by differentiating it twice.

    Returns:
        The Hessians, and the output-space products spent on them (0 for a closed form).
    """
    closed = output_hessian_of(mb.loss_fn)
    hessians = None if closed is None else closed(outputs, mb.batch.targets)
    count = 0
    if hessians is None:
        hessians, count = _differentiated_output_hessians(mb, outputs), outputs[0].numel()
    hessians = hessians.double()
    return (hessians + hessians.transpose(1, 2)) / 2, count


def _differentiated_output_hessians(mb: LayerOutputLoss, outputs: torch.Tensor) -> torch.Tensor:
    """``(b, m, m)`` by double backward: one backward pass per output coordinate.

    Double backward, not forward-over-reverse: the route's check needs double backward through
    the loss anyway, m is small (the classes), and ``torch.func``'s first use imports
    ``torch._dynamo`` (over a second).

    Raises:
        Unsupported: The loss has no double backward (no fast route could be checked).
    """
    b = outputs.shape[0]
    m = outputs[0].numel()
    leaf = outputs.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            g = _grad(mb.output_loss(leaf), leaf, create_graph=True).reshape(b, m)
            # column k: H·e_k with e_k the k-th output of every sample (H is block diagonal)
            columns = [_grad(g[:, k].sum(), leaf).reshape(b, m) for k in range(m)]
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise
        raise Unsupported(f"no double backward through the loss ({exc})") from exc
    return torch.stack(columns, dim=-1)  # [n, i, k] = ∂²L/∂o_ni∂o_nk


def _pullbacks(
    outputs: torch.Tensor, delta: torch.Tensor, cotangents: torch.Tensor
) -> torch.Tensor:
    """J_downᵀ·v for each of the ``(m, *outputs)`` cotangents v: ``(m, *delta)``.

    J_down is the Jacobian of the model ``outputs`` with respect to ``delta``, the leaf added to
    the layer's output: J_downᵀ·v = ∇_δ⟨outputs, v⟩, one backward pass through the downstream
    network each. Plain autograd of scalars: a loop measured as fast as ``is_grads_batched``
    here, ``torch.func``'s first use imports ``torch._dynamo`` (over a second), and an explicit
    ``grad_outputs`` tensor imports sympy (over half a second).
    """
    return torch.stack([_grad((outputs * v).sum(), delta) for v in cotangents])


def gauss_newton_diagonal(
    op: CurvatureOperator,
    mb: LayerOutputLoss,
    traced: Traced,
    a: torch.Tensor,
    *,
    check: bool,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Weight and bias diagonals on one micro-batch by the Gauss–Newton factor.

    Returns the ``(d_out, d_in)`` and ``(d_out,)`` float64 diagonals and the output-space
    products and vjps spent. ∂²/∂W_ij² = Σ_{n,c} λ_{n,c}·(Σₜ u_{n,c,t,i}·aₙₜⱼ)², with ``a`` the
    layer's input as ``(b, T, d_in)`` float64: exact for the GGN, and for the Hessian where the
    downstream network adds no curvature of its own, which ``check`` tells (a double-backward
    product, its random vector seeded by ``seed``).

    Raises:
        Unsupported: The check failed, or the loss has no double backward.
        NumericalError: The output Hessians are NaN/Inf.
    """
    z, outputs = traced.z, traced.outputs
    hessians, spent = _output_hessians(mb, outputs.detach())
    if not bool(torch.isfinite(hessians).all()):  # eigh would fail with a LinAlgError
        raise NumericalError(
            f"the loss's curvature with respect to the model outputs is NaN/Inf on a "
            f"micro-batch of {mb.batch.size} samples (the outputs themselves are "
            f"{'finite' if bool(torch.isfinite(outputs).all()) else 'NaN/Inf'})",
            "check those samples and the weights; try --dtype float64",
        )
    lam, vectors = torch.linalg.eigh(hessians)  # (b, m), (b, m, m)
    m = lam.shape[1]
    cotangents = vectors.permute(2, 0, 1).reshape(m, *outputs.shape).to(outputs.dtype)
    u = _pullbacks(outputs, traced.delta, cotangents)  # (m, b, *z) = J_downᵀ v
    u = u.reshape(m, z.shape[0], -1, z.shape[-1]).double()  # (m, b, T, d_out)
    if check:

        def factored(x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(z.shape[0], -1, z.shape[-1]).double()
            coefficient = torch.einsum("cnti,nti->nc", u, x) * lam
            return torch.einsum("nc,cnti->nti", coefficient, u).reshape(z.shape).to(z.dtype)

        _check(op, mb, traced, seed, factored)
    if a.shape[1] == 1:
        s = torch.einsum("nc,cni->ni", lam, u[:, :, 0].square())
        return s.T @ a[:, 0].square(), s.sum(dim=0), m + spent
    weight = torch.zeros(z.shape[-1], a.shape[-1], dtype=torch.float64, device=z.device)
    for first in range(0, z.shape[0], _chunk(m, z.shape[-1], a.shape[-1])):
        rows = slice(first, first + _chunk(m, z.shape[-1], a.shape[-1]))
        g = torch.einsum("cnti,ntj->cnij", u[:, rows], a[rows])
        weight += torch.einsum("nc,cnij->ij", lam[rows], g.square())
    bias = torch.einsum("nc,cni->i", lam, u.sum(dim=2).square())
    return weight, bias, m + spent


def _chunk(*sizes: int) -> int:
    """Samples per chunk so that a ``(chunk, *sizes)`` float64 temporary stays near 64 MB."""
    return max(1, (8 << 20) // max(1, math.prod(sizes)))


def output_space_diagonal(
    op: CurvatureOperator,
    mb: LayerOutputLoss,
    z: torch.Tensor,
    a: torch.Tensor,
    *,
    check: bool,
    seed: int,
    columns: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Weight and bias diagonals on one micro-batch by output-space products.

    Returns what :func:`gauss_newton_diagonal` does, from the columns of C_z: T·d_out products
    of the downstream network (forward-over-reverse, else double backward), ``columns`` output
    coordinates per call when the operator sets no chunk size, give C_z for every output
    coordinate at once across samples. Exact for any downstream network where samples are
    independent, which ``check`` tells.

    Raises:
        Unsupported: The check failed.
    """
    b, positions, d = z.shape[0], a.shape[1], z.shape[-1]
    variables = {DELTA: torch.zeros_like(z)}
    layer = LayerOutputLoss(mb.model, mb.loss_fn, mb.batch, variables, mb.fixed, mb.module)
    apply, _ = build(op.kind, FORWARD, layer, chunk_size=op.chunk_size)
    coordinates = positions * d
    per_sample = torch.zeros(b, d, positions, positions, dtype=torch.float64, device=z.device)
    step = max(1, op.chunk_size or columns)
    columns: list[torch.Tensor] = []
    for first in range(0, coordinates, step):
        index = torch.arange(first, min(first + step, coordinates), device=z.device)
        tangents = torch.zeros(len(index), b, positions, d, dtype=z.dtype, device=z.device)
        rows = torch.arange(len(index), device=z.device)  # indices on the device, as ``index``
        tangents[rows, :, index // d, index % d] = 1
        try:
            image = apply({DELTA: tangents.reshape(len(index), *z.shape)})[DELTA]
        except RuntimeError as exc:  # no forward-mode rule downstream: double backward
            if is_out_of_memory(exc):
                raise
            apply, _ = build(op.kind, REVERSE, layer, chunk_size=op.chunk_size)
            image = apply({DELTA: tangents.reshape(len(index), *z.shape)})[DELTA]
        image = image.reshape(len(index), b, positions, d).double()
        # column (t', i) of sample n's block, restricted to output i: C_z[n, (t, i), (t', i)]
        per_sample[:, index % d, :, index // d] = image[rows, :, :, index % d]
        if check:
            columns.append(image)
    if check:
        stacked = torch.cat(columns)  # (coordinates, b, T, d)

        def factored(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(b, coordinates).double()
            return torch.einsum("knti,nk->nti", stacked, flat).reshape(z.shape).to(z.dtype)

        _check(op, layer, capture(layer), seed, factored)
    weight = torch.einsum("ntj,nitu,nuj->ij", a, per_sample, a)
    bias = per_sample.sum(dim=(2, 3)).sum(dim=0)
    return weight, bias, coordinates
