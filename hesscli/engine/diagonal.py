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

This module chooses the route per layer; the two fast routes' arithmetic on the layer's output
lives in :mod:`hesscli.engine.layer_outputs`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from hesscli.engine.functional import math_attention
from hesscli.engine.layer_outputs import (
    LayerOutputLoss,
    Unsupported,
    capture,
    gauss_newton_diagonal,
    output_space_diagonal,
)
from hesscli.engine.layout import Block
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.precision import float32_precision
from hesscli.engine.products import MicroBatchLoss
from hesscli.engine.routes import check_slice

GAUSS_NEWTON = "gauss-newton factor"
OUTPUT_SPACE = "output-space products"
UNIT_COLUMNS = "unit columns"
#: Unit columns per data pass of the fallback.
COLUMNS = 64


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
            traced = capture(mb)
            z = traced.z
            a = traced.a.reshape(z.shape[0], -1, traced.a.shape[-1]).double()
            positions = a.shape[1]
            if method == GAUSS_NEWTON:
                try:
                    w, b, n = gauss_newton_diagonal(op, mb, traced, a, check=index == 0, seed=seed)
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
                w, b, n = output_space_diagonal(
                    op, mb, z, a, check=index == 0, seed=seed, columns=COLUMNS
                )
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
    traced = capture(mb)
    a = traced.a.reshape(traced.z.shape[0], -1, traced.a.shape[-1]).double()
    try:
        gauss_newton_diagonal(op, mb, traced, a, check=True, seed=seed)
    except Unsupported:
        return False
    return True


def _ordered(op: CurvatureOperator, block: Block) -> list[str]:
    return [s.name for s in op.layout.slots if s.name in block.parameters]
