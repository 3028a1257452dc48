"""Exact Hessian (or GGN) diagonals of layers, fast where the layer's structure allows.

For a ``Linear`` layer z = a·Wᵀ + b used once per forward, L depends on W only through z, and z
is linear in W, so ∂²L/∂W_ij² = Σₙ Σ_{t,t'} aₙₜⱼ·aₙₜ'ⱼ·∂²L/∂zₙₜᵢ∂zₙₜ'ᵢ (t runs over the positions
of a token or sequence axis; there is one when the layer acts on vectors). When samples are
independent, the curvature C_z of the loss with respect to the layer's output is block diagonal
over samples, and the whole weight diagonal follows from C_z alone. Two exact routes, each
checked at run time against a true product C_z·u for a random u (one double-backward product
through the loss as written), in this order:

1. **Gauss–Newton factor** (m vjps, m = output size per sample, e.g. the classes): with
   H_out,n = Vₙ·diag(λₙ)·Vₙᵀ the loss Hessian of sample n w.r.t. the model outputs and
   u_{n,c} = J_{down,n}ᵀ·v_{n,c}, the downstream Gauss–Newton matrix is Σ_c λ_{n,c}·u_{n,c}u_{n,c}ᵀ
   and ∂²/∂W_ij² = Σ_{n,c} λ_{n,c}·(Σₜ u_{n,c,t,i}·aₙₜⱼ)². Exact for the GGN, and for the Hessian
   when the downstream network adds no curvature of its own (ReLU, max-pool, linear maps): the
   check tells. H_out,n comes from the loss's closed form where it carries one
   (:mod:`hesscli.engine.output_curvature`: the built-in losses), else by double backward.
2. **Output-space products** (T·d_out products of the downstream network): the columns of C_z
   for every output coordinate at once across samples. Exact for any downstream network.

Anything else (other layer types, shared weights, coupled samples, a failed check) takes P_l unit
columns through the full operator — exact, slower, and reported as such.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from hesscli.engine.functional import Params, call_model, math_attention
from hesscli.engine.layout import Block
from hesscli.engine.memory import is_out_of_memory
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.output_curvature import output_hessian_of
from hesscli.engine.precision import float32_precision
from hesscli.engine.products import MicroBatchLoss
from hesscli.engine.routes import (
    FORWARD,
    REVERSE,
    agreement_tolerance,
    build,
    check_slice,
    relative_difference,
)
from hesscli.errors import NumericalError

DELTA = "output"
GAUSS_NEWTON = "gauss-newton factor"
OUTPUT_SPACE = "output-space products"
UNIT_COLUMNS = "unit columns"
#: Unit columns per data pass of the fallback.
COLUMNS = 64


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


@dataclass
class LayerDiagonals:
    """Exact diagonals of the selected blocks, in each block's flat layout order.

    Attributes:
        values: Block name → ``(n,)`` float64 diagonal.
        methods: Block name → how it was computed (and why the fast route was not used).
        products: Products of the full operator spent (unit columns and checks).
        output_products: Products and vjps in layer-output space (much cheaper each).
        seconds: Wall time.
    """

    values: dict[str, torch.Tensor] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    products: int = 0
    output_products: int = 0
    seconds: float = 0.0


class Unsupported(Exception):
    """The fast route does not apply to this layer (the message says why)."""


def exact_diagonal(
    op: CurvatureOperator,
    *,
    blocks: list[str] | None = None,
    seed: int = 0,
    unit_columns_limit: int | None = None,
    output_space_limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LayerDiagonals:
    """diag(C_ll) of every block in ``blocks`` (default: all), exact, fastest route first.

    Args:
        op: The operator (its blocks are the layers).
        blocks: Block names (default: every block).
        seed: Seed of the random check vector.
        unit_columns_limit: Unit columns all blocks together may spend (in order); blocks
            beyond it are left out (their ``methods`` entry says so); ``None``: no limit.
        output_space_limit: Output-space products per micro-batch a block may spend on its
            second fast route; beyond it the block falls to unit columns.
        progress: Called as ``progress(blocks done, blocks)``.
    """
    start = time.perf_counter()
    wanted = [op.layout.block(name) for name in blocks] if blocks else list(op.blocks)
    result = LayerDiagonals()
    modules = dict(op.model.named_modules())
    before = op.counters.products
    columns_left = unit_columns_limit
    for index, block in enumerate(wanted):
        try:
            with float32_precision(op.allow_tf32):  # as the operator's own passes
                values, method, count = _agreed(
                    op, block, modules.get(block.name), seed, output_space_limit
                )
            result.output_products += count
        except Unsupported as why:
            if columns_left is not None and block.size > columns_left:
                result.methods[block.name] = f"left out ({why}; {block.size} unit columns)"
                continue
            if columns_left is not None:
                columns_left -= block.size
            values, method = _unit_columns(op, block), f"{UNIT_COLUMNS} ({why})"
        result.values[block.name], result.methods[block.name] = values, method
        if progress is not None:
            progress(index + 1, len(wanted))
    result.products = op.counters.products - before
    result.seconds = time.perf_counter() - start
    return result


def has_fast_route(op: CurvatureOperator, block: Block) -> bool:
    """Whether the block is a layer the fast routes accept (its run-time checks still apply)."""
    try:
        _eligible(op, block, dict(op.model.named_modules()).get(block.name))
    except Unsupported:
        return False
    return True


def _unit_columns(op: CurvatureOperator, block: Block) -> torch.Tensor:
    """(C_ll·eᵢ)ᵢ for every coordinate i of the block, ``COLUMNS`` per data pass.

    Products on the block alone (:meth:`CurvatureOperator.block_product`): memory of the
    layer's size per column, whatever the model's.
    """
    values = torch.empty(block.size, dtype=torch.float64, device=op.device)
    for first in range(0, block.size, COLUMNS):
        count = min(COLUMNS, block.size - first)
        rows = torch.arange(first, first + count, device=op.device)
        unit = torch.zeros(block.size, count, device=op.device, dtype=op.dtype)
        unit[rows, torch.arange(count, device=op.device)] = 1
        image = op.block_product(block, unit)
        values[first : first + count] = image[rows, torch.arange(count, device=op.device)].double()
    return values


def _eligible(op: CurvatureOperator, block: Block, module: nn.Module | None) -> nn.Linear:
    if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
        raise Unsupported(f"{type(module).__name__} layer")
    own = {f"{block.name}.{n}" if block.name else n for n, _ in module.named_parameters()}
    if set(block.parameters) != own:
        raise Unsupported("the layer's parameters are not all selected")
    seen: dict[int, int] = {}
    for _, p in op.model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    if any(seen[id(p)] > 1 for p in module.parameters()):
        raise Unsupported("the weight is shared with another layer")
    return module


def _layer_losses(op: CurvatureOperator, module: nn.Module, mb: MicroBatchLoss) -> LayerOutputLoss:
    fixed = {**mb.fixed, **{n: t.detach() for n, t in mb.variables.items()}}
    return LayerOutputLoss(mb.model, mb.loss_fn, mb.batch, {}, fixed, module)


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


def _capture(mb: LayerOutputLoss) -> Traced:
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


def _agreed(
    op: CurvatureOperator,
    block: Block,
    module: nn.Module | None,
    seed: int,
    output_space_limit: int | None = None,
) -> tuple[torch.Tensor, str, int]:
    """The fast route where every rank can take it (its checks run on local data), summed.

    With several ranks, one rank's failed check sends every rank to unit columns, so that
    all of them take part in the same collective products.
    """
    try:
        values, method, count = _fast(op, block, module, seed, output_space_limit)
        why = ""
    except Unsupported as exc:
        values, method, count, why = torch.empty(0), "", 0, str(exc)
    if not op.group.everywhere(not why):
        raise Unsupported(why or "the fast route failed its check on another rank")
    op.group.sum_(values)
    return values, method, count


def _fast(
    op: CurvatureOperator,
    block: Block,
    module: nn.Module | None,
    seed: int,
    output_space_limit: int | None = None,
) -> tuple[torch.Tensor, str, int]:
    linear = _eligible(op, block, module)
    weight = torch.zeros(linear.weight.shape, dtype=torch.float64, device=op.device)
    bias = torch.zeros(linear.out_features, dtype=torch.float64, device=op.device)
    method, count = GAUSS_NEWTON, 0
    with math_attention():
        for index, (_first, base, scale) in enumerate(op.micro_batch_losses()):
            mb = _layer_losses(op, linear, base)
            if index == 0 and not _gauss_newton_holds_on_a_slice(op, linear, base, seed):
                method = OUTPUT_SPACE  # the downstream network has curvature of its own
            traced = _capture(mb)
            z = traced.z
            a = traced.a.reshape(z.shape[0], -1, traced.a.shape[-1]).double()
            positions = a.shape[1]
            if method == GAUSS_NEWTON:
                try:
                    w, b, n = _gauss_newton(op, mb, traced, a, check=index == 0, seed=seed)
                except Unsupported:
                    if index:
                        raise
                    method = OUTPUT_SPACE
            del traced  # the downstream graph
            if method == OUTPUT_SPACE:
                needed = positions * linear.out_features
                if needed >= block.size:
                    raise Unsupported("output-space products would cost more than unit columns")
                if output_space_limit is not None and needed > output_space_limit:
                    raise Unsupported(
                        f"the Gauss–Newton factor does not hold, and output-space products "
                        f"would take {needed} per micro-batch"
                    )
                w, b, n = _output_space(op, mb, z, a, check=index == 0, seed=seed)
            weight += scale * w
            bias += scale * b
            count += n
    op.counters.data_passes += 1
    parts = {"weight": weight, "bias": bias}
    values = torch.cat([parts[name.rsplit(".", 1)[-1]].flatten() for name in _ordered(op, block)])
    return values, method, count


def _gauss_newton_holds_on_a_slice(
    op: CurvatureOperator, linear: nn.Linear, base: MicroBatchLoss, seed: int
) -> bool:
    """The Gauss–Newton factor's check on the first few samples (cheap where it fails).

    Passing here is not enough: the whole first micro-batch is checked again. Failing here
    spares the pullbacks and the check product over the whole micro-batch.
    """
    sliced = check_slice(base)
    if sliced is base:
        return True
    mb = _layer_losses(op, linear, sliced)
    traced = _capture(mb)
    a = traced.a.reshape(traced.z.shape[0], -1, traced.a.shape[-1]).double()
    try:
        _gauss_newton(op, mb, traced, a, check=True, seed=seed)
    except Unsupported:
        return False
    return True


def _ordered(op: CurvatureOperator, block: Block) -> list[str]:
    return [s.name for s in op.layout.slots if s.name in block.parameters]


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


def _gauss_newton(
    op: CurvatureOperator,
    mb: LayerOutputLoss,
    traced: Traced,
    a: torch.Tensor,
    *,
    check: bool,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
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


def _output_space(
    op: CurvatureOperator,
    mb: LayerOutputLoss,
    z: torch.Tensor,
    a: torch.Tensor,
    *,
    check: bool,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    b, positions, d = z.shape[0], a.shape[1], z.shape[-1]
    variables = {DELTA: torch.zeros_like(z)}
    layer = LayerOutputLoss(mb.model, mb.loss_fn, mb.batch, variables, mb.fixed, mb.module)
    apply, _ = build(op.kind, FORWARD, layer, chunk_size=op.chunk_size)
    coordinates = positions * d
    per_sample = torch.zeros(b, d, positions, positions, dtype=torch.float64, device=z.device)
    step = max(1, op.chunk_size or COLUMNS)
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

        _check(op, layer, _capture(layer), seed, factored)
    weight = torch.einsum("ntj,nitu,nuj->ij", a, per_sample, a)
    bias = per_sample.sum(dim=(2, 3)).sum(dim=0)
    return weight, bias, coordinates
