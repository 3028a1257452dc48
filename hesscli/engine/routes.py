"""The differentiation routes: their names, the report of which one runs, and building it.

A route is how a curvature-vector product is differentiated: double backward
(reverse-over-reverse), forward-over-reverse, or central finite differences of the gradient.
This module names them, builds a micro-batch's product closure by one of them, and writes the
:class:`RouteReport` that says which route computes the products and why, including the report
of double backward checked by its own first products (the default on one process). Choosing
a route by checking it on a slice of the first micro-batch is :mod:`.route_check`'s; the slice
itself is defined here, because the operator's determinism check runs on it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch.nn.functional import scaled_dot_product_attention
from torch.overrides import TorchFunctionMode

from hesscli.engine.functional import Params
from hesscli.engine.memory import SavedBytes
from hesscli.engine.products import (
    Apply,
    MicroBatchLoss,
    finite_difference,
    ggn_forward,
    ggn_reverse,
    hessian_forward,
    hessian_reverse,
)
from hesscli.engine.symmetry import agreement_tolerance

FORWARD = "forward-over-reverse"
REVERSE = "reverse-over-reverse"
FINITE = "finite-differences"
#: User-facing names of ``--hvp-method`` and the route each one forces.
METHODS = {"auto": None, "forward": FORWARD, "reverse": REVERSE, "fd": FINITE}
#: What a route raises when an operator has no rule for it (out of memory excepted).
MISSING_RULE = (RuntimeError, NotImplementedError, TypeError, ValueError)
#: What the attention report says when the model calls scaled_dot_product_attention.
MATH_ATTENTION = (
    "scaled_dot_product_attention runs on its math kernel: the fused kernels (flash, "
    "memory-efficient) have no forward-mode or double-backward rules"
)


@dataclass(frozen=True)
class RouteReport:
    """Which route computes the products, and the evidence for it.

    Attributes:
        route: ``forward-over-reverse`` or ``reverse-over-reverse``.
        requested: The ``--hvp-method`` asked for (``auto``, ``forward``, ``reverse``).
        reason: One sentence a user can read.
        difference: Worst per-parameter relative difference between the two routes on the
            check slice (``None`` when only one route ran).
        referee: Worst relative error of each route against finite differences, when the
            routes disagreed or only one could run.
        seconds: Time each route took on the check slice (for the record; never a criterion).
        symmetry: |uᵀCv − vᵀCu| relative to ‖C‖ for the kept route (see
            :func:`~.symmetry.symmetry_defect`).
        check_products: Products on the check slice the check spent.
        error: Estimated relative error of the products: 0 for the exact routes, and for
            finite differences the gap between steps h and 2h on the first micro-batch.
        attention: How attention is computed, when the model uses
            ``scaled_dot_product_attention`` (else empty).
    """

    route: str
    requested: str
    reason: str
    difference: float | None = None
    referee: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    symmetry: float = 0.0
    check_products: int = 0
    error: float = 0.0
    attention: str = ""


def build(
    kind: str,
    route: str,
    mb: MicroBatchLoss,
    *,
    chunk_size: int | None,
    gradient: Params | None = None,
) -> tuple[Apply, int]:
    """The product closure of ``kind`` (``hessian``/``ggn``) by ``route`` on one micro-batch.

    ``gradient``, for the Hessian by double backward, receives the gradient the build computes
    on the way (see :func:`~.products.hessian_reverse`); other routes leave it empty.

    Returns:
        The closure, and for the reverse route the bytes its retained gradient graph holds
        (what caching it costs); 0 for the forward route, which retains nothing.
    """
    if route == FORWARD:
        factory = hessian_forward if kind == "hessian" else ggn_forward
        return factory(mb, chunk_size=chunk_size), 0
    if route == FINITE:
        return finite_difference(mb, kind), 0
    with SavedBytes() as saved:  # torch.func refuses saved-tensor hooks: reverse route only
        apply = hessian_reverse(mb, gradient) if kind == "hessian" else ggn_reverse(mb)
    return apply, saved.total


def relative_difference(a: Params, b: Params) -> tuple[float, str]:
    """Worst per-parameter ‖a−b‖/(‖b‖ + √ε‖b‖_all), and the parameter where it occurs.

    Per-parameter, so that a wrong block in a small tensor (a LayerNorm weight among millions
    of parameters) is not averaged away; the floor keeps near-zero blocks from dominating.
    """
    total = torch.sqrt(sum(t.double().square().sum() for t in b.values()))
    floor = agreement_tolerance(next(iter(b.values())).dtype) * float(total)
    worst, where = 0.0, ""
    for name in b:
        gap = float(torch.linalg.vector_norm((a[name] - b[name]).double()))
        scale = float(torch.linalg.vector_norm(b[name].double())) + floor
        value = gap / scale if scale > 0 else (0.0 if gap == 0 else float("inf"))
        if value > worst or not where:
            worst, where = value, name
    return worst, where


#: Samples of the first micro-batch that the route check runs on.
CHECK_SAMPLES = 4


def check_slice(mb: MicroBatchLoss) -> MicroBatchLoss:
    """The first :data:`CHECK_SAMPLES` samples of ``mb``: what the route check runs on.

    All of ``mb`` when the slice's loss is not finite (e.g. it holds only padding tokens).
    """
    if mb.batch.size <= CHECK_SAMPLES:
        return mb
    part = MicroBatchLoss(
        mb.model, mb.loss_fn, mb.batch.slice(0, CHECK_SAMPLES), mb.variables, mb.fixed
    )
    with torch.no_grad():
        finite = bool(torch.isfinite(part.loss(part.variables)))
    return part if finite else mb


def reverse_reason(requested: str) -> str:
    """Why double backward was kept, before any evidence: asked for, or the default."""
    if METHODS[requested] == REVERSE:
        return "as requested"
    return "the default route: double backward has no forward-mode rules to get wrong"


def self_checked_reverse(requested: str, attention: bool) -> RouteReport:
    """Double backward on the whole first micro-batch, to be judged by its own products.

    The operator feeds its first columns to :class:`~.symmetry.FirstColumns` and then
    replaces this report by :func:`judged_reverse`'s; until then the reason says so.
    """
    return RouteReport(
        REVERSE,
        requested,
        reverse_reason(requested) + "; symmetry not judged yet (no two columns computed)",
        attention=MATH_ATTENTION if attention else "",
    )


def judged_reverse(report: RouteReport, defect: float) -> RouteReport:
    """``report`` once the first two columns computed passed the symmetry check."""
    reason = (
        f"{reverse_reason(report.requested)}; symmetric to {defect:.1e} on the first two "
        "columns computed (no extra product)"
    )
    return replace(report, reason=reason, symmetry=defect)


class WatchAttention(TorchFunctionMode):
    """Records whether a forward pass calls ``scaled_dot_product_attention``."""

    def __init__(self) -> None:
        super().__init__()
        self.attention = False

    def __torch_function__(
        self, func: object, types: object, args: tuple = (), kwargs: dict | None = None
    ) -> object:
        if func is scaled_dot_product_attention:
            self.attention = True
        return func(*args, **(kwargs or {}))  # type: ignore[operator]


def uses_attention(mb: MicroBatchLoss) -> bool:
    """Whether the model's forward pass calls ``scaled_dot_product_attention`` (one forward)."""
    with torch.no_grad(), WatchAttention() as watch:
        mb.loss(mb.variables)
    return watch.attention
