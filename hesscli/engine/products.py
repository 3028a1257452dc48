"""Curvature products on one micro-batch: the factories every operator is built from.

A product factory takes the pieces of one micro-batch's mean loss and returns a pure closure
``apply(V) -> C·V`` for a block of K tangent vectors (a parameter dict whose tensors carry a
leading K axis). When ``V`` names only a subset S of the variables, the closure returns the
diagonal block's product C_SS·V_S on S alone: per-layer algorithms then never build a
parameter-length column per layer, and the reverse route differentiates only what S needs.
Two routes exist for each curvature kind:

- **forward-over-reverse**: ``jvp`` of ``grad``, vectorised over the K columns with ``vmap``;
- **reverse-over-reverse** (double backward): the gradient graph is built once per micro-batch
  and every column costs one more backward pass through it. The graph can be kept and reused
  by later calls at the same parameters.

Finite differences of first derivatives (:func:`hessian_fd`, :func:`ggn_fd`) are the independent
referee used when the two routes disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, jvp, vjp, vmap

from hesscli.batches import Batch
from hesscli.engine.functional import Params, call_model

#: ``apply(V)`` maps a block of tangents ``{name: (K, *shape)}`` to the products, same layout.
Apply = Callable[[Params], Params]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MicroBatchLoss:
    """One micro-batch's mean loss as a function of the parameters being differentiated.

    Attributes:
        model: The module (its buffers and frozen parameters stay its own).
        loss_fn: ``loss_fn(outputs, targets)`` → mean over the batch.
        batch: The micro-batch, already on the right device and dtype.
        variables: Parameters the curvature is taken with respect to.
        fixed: Other trainable parameters, held constant (detached).
    """

    model: nn.Module
    loss_fn: LossFn
    batch: Batch
    variables: Params
    fixed: Params

    def outputs(self, variables: Params) -> torch.Tensor:
        """Model outputs with ``variables`` overriding the module's parameters."""
        return call_model(self.model, {**self.fixed, **variables}, self.batch.inputs)

    def loss(self, variables: Params) -> torch.Tensor:
        """Mean loss of the micro-batch."""
        return self.loss_fn(self.outputs(variables), self.batch.targets)

    def output_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        """Mean loss as a function of the model outputs alone (for the GGN's H_out)."""
        return self.loss_fn(outputs, self.batch.targets)


def hessian_forward(mb: MicroBatchLoss, *, chunk_size: int | None) -> Apply:
    """H·V by forward-over-reverse: the jvp of ∇L along each column, vmapped over columns."""
    gradient = grad(mb.loss)

    def column(v: Params) -> Params:
        return jvp(gradient, (mb.variables,), (v,))[1]  # d/dt ∇L(θ + t·v) = H·v

    batched = vmap(column, chunk_size=chunk_size)

    def apply(block: Params) -> Params:
        full = batched(_filled(mb.variables, block))
        return {n: full[n] for n in block}

    return apply


def hessian_reverse(mb: MicroBatchLoss, gradient: Params | None = None) -> Apply:
    """H·V by reverse-over-reverse (double backward).

    g = ∇L(θ) is built once with its graph; each column then costs one backward of ⟨g, v⟩,
    since H·v = ∇θ⟨∇L(θ), v⟩. When ``gradient`` is given it receives g's values (detached,
    zeros where the loss does not depend on a variable): the build computes them anyway.
    """
    names = list(mb.variables)
    leaves = [mb.variables[n].detach().requires_grad_(True) for n in names]
    loss = mb.loss(dict(zip(names, leaves, strict=True)))
    gradients = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
    if gradient is not None:
        for name, leaf, g in zip(names, leaves, gradients, strict=True):
            gradient[name] = torch.zeros_like(leaf) if g is None else g.detach()
    # Parameters the loss never touches have zero gradient and zero curvature.
    live = {i for i, g in enumerate(gradients) if g is not None and g.requires_grad}

    def column(wanted: list[int], block: Params, k: int) -> dict[int, torch.Tensor]:
        pieces = torch.autograd.grad(  # H_SS·v_S = ∇_S ⟨∇_S L, v_S⟩
            _inner([gradients[i] for i in wanted], [block[names[i]][k] for i in wanted]),
            [leaves[i] for i in wanted],
            retain_graph=True,
            allow_unused=True,
        )
        return {i: p for i, p in zip(wanted, pieces, strict=True) if p is not None}

    def apply(block: Params) -> Params:
        count = next(iter(block.values())).shape[0]
        subset = [i for i, n in enumerate(names) if n in block]
        wanted = [i for i in subset if i in live]  # else linear in these variables: H_SS = 0
        if count == 1:  # the pieces are the product: no result buffer to fill
            pieces = column(wanted, block, 0) if wanted else {}
            return {
                names[i]: (pieces[i] if i in pieces else leaves[i].new_zeros(leaves[i].shape))[None]
                for i in subset
            }
        # Written column by column into the result: no list of columns to stack afterwards.
        out = {names[i]: leaves[i].new_zeros((count, *leaves[i].shape)) for i in subset}
        for k in range(count if wanted else 0):
            for i, piece in column(wanted, block, k).items():
                out[names[i]][k].copy_(piece)
        return out

    return apply


def ggn_forward(mb: MicroBatchLoss, *, chunk_size: int | None) -> Apply:
    """GGN·V = Jᵀ H_out J·V with forward mode for J·v, vmapped over columns."""
    outputs, pullback = vjp(mb.outputs, mb.variables)
    output_gradient = grad(mb.output_loss)

    def column(v: Params) -> Params:
        jv = jvp(mb.outputs, (mb.variables,), (v,))[1]  # v → J·v
        hjv = jvp(output_gradient, (outputs,), (jv,))[1]  # → H_out·J·v
        return pullback(hjv)[0]  # → Jᵀ·H_out·J·v

    batched = vmap(column, chunk_size=chunk_size)

    def apply(block: Params) -> Params:
        full = batched(_filled(mb.variables, block))
        return {n: full[n] for n in block}

    return apply


def ggn_reverse(mb: MicroBatchLoss) -> Apply:
    """GGN·V = Jᵀ H_out J·V by reverse mode only.

    J·v comes from the double-vjp trick: u ↦ Jᵀu is linear in a dummy u, so the vjp of
    ``Jᵀu`` with respect to u along v is J·v.
    """
    names = list(mb.variables)
    leaves = [mb.variables[n].detach().requires_grad_(True) for n in names]
    outputs = mb.outputs(dict(zip(names, leaves, strict=True)))
    detached = outputs.detach().requires_grad_(True)
    output_gradient = torch.autograd.grad(mb.output_loss(detached), detached, create_graph=True)[0]
    dummy = torch.zeros_like(outputs, requires_grad=True)
    transposed = torch.autograd.grad(
        outputs, leaves, grad_outputs=dummy, create_graph=True, allow_unused=True
    )
    live = {i for i, t in enumerate(transposed) if t is not None and t.requires_grad}

    def apply(block: Params) -> Params:
        count = next(iter(block.values())).shape[0]
        subset = [i for i, n in enumerate(names) if n in block]
        wanted = [i for i in subset if i in live]
        targets = [leaves[i] for i in subset]
        columns = []
        for k in range(count):
            if not wanted:  # outputs that do not depend on these variables: J_S = 0
                columns.append([torch.zeros_like(leaf) for leaf in targets])
                continue
            (jv,) = torch.autograd.grad(  # v_S → J_S·v_S
                _inner([transposed[i] for i in wanted], [block[names[i]][k] for i in wanted]),
                dummy,
                retain_graph=True,
            )
            if output_gradient.requires_grad:  # → H_out·J_S·v_S
                (hjv,) = torch.autograd.grad(
                    _inner([output_gradient], [jv]), detached, retain_graph=True
                )
            else:  # a loss linear in the outputs has H_out = 0
                hjv = torch.zeros_like(jv)
            column = torch.autograd.grad(  # → J_Sᵀ·H_out·J_S·v_S
                _inner([outputs], [hjv]), targets, retain_graph=True, allow_unused=True
            )
            columns.append(
                [
                    torch.zeros_like(x) if c is None else c
                    for c, x in zip(column, targets, strict=True)
                ]
            )
        return {names[i]: _stack([c[j] for c in columns], leaves[i]) for j, i in enumerate(subset)}

    return apply


def hessian_fd(mb: MicroBatchLoss, v: Params, *, scale: float = 1.0) -> Params:
    """H·v by central differences of the gradient: (∇L(θ+hv) − ∇L(θ−hv)) / 2h.

    Uses first derivatives only, so it is independent of both second-order routes; its error
    is O(h²) truncation plus O(ε/h) round-off, with h balancing the two (``scale`` multiplies
    h, to estimate that error from two step sizes).
    """
    step = scale * _fd_step(mb.variables, v)
    plus = _gradient(mb.loss, _shift(mb.variables, v, step))
    minus = _gradient(mb.loss, _shift(mb.variables, v, -step))
    return {n: (plus[n] - minus[n]) / (2 * step) for n in mb.variables}


def ggn_fd(mb: MicroBatchLoss, v: Params, *, scale: float = 1.0) -> Params:
    """GGN·v by central differences, using first derivatives only.

    J·v from the outputs at θ±hv, H_out·(J·v) from the output gradients at f±h'·Jv, then the
    vjp Jᵀ(·); ``scale`` multiplies both steps.
    """
    step = scale * _fd_step(mb.variables, v)
    with torch.no_grad():
        jv = mb.outputs(_shift(mb.variables, v, step)) - mb.outputs(_shift(mb.variables, v, -step))
        jv = jv / (2 * step)
    outputs, pullback = vjp(mb.outputs, mb.variables)
    out_step = scale * _fd_step({"o": outputs}, {"o": jv})
    plus = grad(mb.output_loss)(outputs + out_step * jv)
    minus = grad(mb.output_loss)(outputs - out_step * jv)
    return pullback((plus - minus) / (2 * out_step))[0]


def finite_difference(mb: MicroBatchLoss, kind: str) -> Apply:
    """C·V column by column by central differences of first derivatives (the last resort).

    Two gradient evaluations per column and an error of about √ε relative in the best case:
    for models where neither second-order route runs (operators without forward-mode or
    double-backward rules).
    """
    single = hessian_fd if kind == "hessian" else ggn_fd

    def apply(block: Params) -> Params:
        full = _filled(mb.variables, block)
        count = next(iter(full.values())).shape[0]
        columns = [single(mb, {n: t[k] for n, t in full.items()}) for k in range(count)]
        return {n: _stack([c[n] for c in columns], block[n][0]) for n in block}

    return apply


def _inner(tensors: list[torch.Tensor], vectors: list[torch.Tensor]) -> torch.Tensor:
    """Σ ⟨tᵢ, vᵢ⟩, whose gradient is the vector-Jacobian product with the vᵢ.

    The same numbers as ``grad_outputs=vectors`` (the backward of a sum and a product multiplies
    by exactly 1 and vᵢ), without the symbolic-shape machinery (sympy, about a second to
    import) that torch loads on the first call with ``grad_outputs``.
    """
    # dot of flat views: no parameter-sized temporary per term, one fused reduction each.
    total = torch.dot(tensors[0].reshape(-1), vectors[0].reshape(-1))
    for tensor, vector in zip(tensors[1:], vectors[1:], strict=True):
        total = total + torch.dot(tensor.reshape(-1), vector.reshape(-1))
    return total


def _filled(variables: Params, block: Params) -> Params:
    """``block`` on every variable: the ones it leaves out get zero tangents (no memory)."""
    count = next(iter(block.values())).shape[0]
    return {
        n: block[n] if n in block else p.new_zeros(()).expand(count, *p.shape)
        for n, p in variables.items()
    }


def _gradient(loss: Callable[[Params], torch.Tensor], at: Params) -> Params:
    return grad(loss)(at)


def _shift(params: Params, v: Params, step: float) -> Params:
    return {n: params[n] + step * v[n] for n in params}


def _fd_step(params: Params, v: Params) -> float:
    """The step h = ε^(1/3)·max(1, ‖θ‖)/‖v‖, balancing truncation against round-off."""
    sample = next(iter(params.values()))
    eps = torch.finfo(sample.dtype).eps
    theta = torch.sqrt(sum(p.double().square().sum() for p in params.values()))
    norm = torch.sqrt(sum(t.double().square().sum() for t in v.values()))
    return float(eps ** (1 / 3) * max(1.0, float(theta)) / max(float(norm), 1e-30))


def _stack(columns: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if not columns:
        return like.new_zeros((0, *like.shape))
    return torch.stack(columns)
