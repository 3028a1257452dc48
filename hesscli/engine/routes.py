"""Choosing, and checking, the differentiation route on the first micro-batch.

Forward-mode rules are missing for some operators and silently wrong for others (``layer_norm``
in some compositions, pytorch #196700), while double backward is missing for some fused kernels.
So the first micro-batch's products are computed by **both** routes: when they agree, the faster
one is kept (or the one the user asked for); when they disagree, central finite differences of
first derivatives referee, and the route that agrees with them is used. Either way the outcome is
reported, so no number is silently wrong.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import torch
from torch.func import grad, jvp, vmap
from torch.nn.functional import scaled_dot_product_attention
from torch.overrides import TorchFunctionMode

from hesscli.engine.functional import Params
from hesscli.engine.memory import SavedBytes, is_out_of_memory
from hesscli.engine.products import (
    Apply,
    MicroBatchLoss,
    finite_difference,
    ggn_fd,
    ggn_forward,
    ggn_reverse,
    hessian_fd,
    hessian_forward,
    hessian_reverse,
)
from hesscli.errors import DifferentiationError, NumericalError

FORWARD = "forward-over-reverse"
REVERSE = "reverse-over-reverse"
FINITE = "finite-differences"
#: User-facing names of ``--hvp-method`` and the route each one forces.
METHODS = {"auto": None, "forward": FORWARD, "reverse": REVERSE, "fd": FINITE}
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
            first micro-batch (``None`` when only one route could run).
        referee: Worst relative error of each route against finite differences, when the
            routes disagreed or only one could run.
        seconds: Time each route took on the first micro-batch.
        symmetry: |uᵀCv − vᵀCu| relative to ‖C‖ for the kept route (see
            :func:`symmetry_defect`).
        check_products: Single-micro-batch products the check spent beyond the requested ones.
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
    kind: str, route: str, mb: MicroBatchLoss, *, chunk_size: int | None
) -> tuple[Apply, int]:
    """The product closure of ``kind`` (``hessian``/``ggn``) by ``route`` on one micro-batch.

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
        apply = hessian_reverse(mb) if kind == "hessian" else ggn_reverse(mb)
    return apply, saved.total


def agreement_tolerance(dtype: torch.dtype) -> float:
    """Relative difference two exact routes may show from round-off alone: √ε."""
    return float(torch.finfo(dtype).eps) ** 0.5


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


def symmetry_defect(block: Params, product: Params) -> float:
    """|uᵀ(Cv) − vᵀ(Cu)| relative to ‖C‖, from two random columns u, v and their products.

    Exact curvature is symmetric, whatever the model (ReLU kinks included), so this catches
    what agreement between the routes cannot: both routes wrong together, as when a custom
    ``autograd.Function`` backward is ``once_differentiable`` and torch silently drops its
    second derivative. Dot products are taken in float64; for random u, v the value is about
    ‖C − Cᵀ‖_F/‖C‖_F.
    """
    u = torch.cat([t[0].reshape(-1) for t in block.values()]).double()
    v = torch.cat([t[1].reshape(-1) for t in block.values()]).double()
    cu = torch.cat([t[0].reshape(-1) for t in product.values()]).double()
    cv = torch.cat([t[1].reshape(-1) for t in product.values()]).double()
    rms = float(torch.sqrt(u.norm() * v.norm() / u.numel()))
    scale = float(torch.sqrt(cu.norm() ** 2 + cv.norm() ** 2)) * rms
    gap = abs(float(u @ cv) - float(v @ cu))
    return gap / scale if scale > 0 else 0.0


@dataclass
class _Attempt:
    route: str
    apply: Apply | None = None
    product: Params | None = None
    seconds: float = 0.0
    error: str = ""
    graph_bytes: int = 0


@functools.cache
def _warm_up() -> None:
    """Run a tiny vmapped jvp-of-grad once per process.

    torch.func's one-time set-up (about a second) should not be billed to the forward route
    when the two routes are timed against each other.
    """
    vmap(lambda v: jvp(grad(lambda x: (x * x).sum()), (torch.ones(2),), (v,))[1])(torch.eye(2))


def _attempt(
    kind: str, route: str, mb: MicroBatchLoss, block: Params, chunk: int | None
) -> _Attempt:
    start = time.perf_counter()
    try:
        apply, graph_bytes = build(kind, route, mb, chunk_size=chunk)
        product = apply(block)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        if is_out_of_memory(exc):  # the operator retries smaller; not a missing rule
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return _Attempt(route, error=text[:300])
    return _Attempt(route, apply, product, time.perf_counter() - start, "", graph_bytes)


def _first_column(block: Params) -> Params:
    return {n: t[0] for n, t in block.items()}


def _referee(
    kind: str, mb: MicroBatchLoss, block: Params, attempts: list[_Attempt]
) -> dict[str, float]:
    """Each route's worst relative error on the first column against finite differences."""
    reference = (hessian_fd if kind == "hessian" else ggn_fd)(mb, _first_column(block))
    return {
        a.route: relative_difference(_first_column(a.product), reference)[0]
        for a in attempts
        if a.product is not None
    }


def select_route(
    kind: str, requested: str, mb: MicroBatchLoss, block: Params, *, chunk_size: int | None
) -> tuple[Apply, Params, RouteReport, int]:
    """Compute the first micro-batch's products by both routes and keep the right one.

    Checks, in order: each route runs (else the other is used); the routes agree (else finite
    differences referee); the kept route's products are symmetric (else both are wrong).

    Returns:
        The chosen route's closure for this micro-batch, its products on ``block`` (so the
        work is not repeated), the report, and the bytes of the closure's retained graph.

    Raises:
        DifferentiationError: when no route can differentiate the model twice, or the route the
            user forced cannot.
        NumericalError: when the forced route is the wrong one, or the curvature the routes
            give is not symmetric.
    """
    forced = METHODS[requested]
    count = next(iter(block.values())).shape[0]
    probe = _with_probes(block)
    attention = MATH_ATTENTION if uses_attention(mb) else ""
    if forced == FINITE:
        return _finite_route(kind, requested, mb, probe, count, "as requested", attention)
    _warm_up()
    attempts = [_attempt(kind, r, mb, probe, chunk_size) for r in (FORWARD, REVERSE)]
    ok = [a for a in attempts if a.error == ""]
    seconds = {a.route: a.seconds for a in ok}
    difference: float | None = None
    referee: dict[str, float] = {}
    if not ok:
        failures = "; ".join(f"{a.route} failed with {a.error!r}" for a in attempts)
        return _finite_route(kind, requested, mb, probe, count, failures, attention)
    if len(ok) == 1:
        (chosen,) = ok
        (failed,) = [a for a in attempts if a.error]
        if forced is not None and forced != chosen.route:
            raise DifferentiationError(
                f"--hvp-method {requested} is unavailable for this model: {failed.error}",
                "use --hvp-method auto (it falls back to the route that works)",
            )
        if chosen.route == FORWARD:  # for the record: double backward is the reference
            referee = _referee(kind, mb, probe, ok)
        reason = f"{failed.route} is unavailable ({failed.error})"
    elif not all(_finite(a.product) for a in attempts if a.product is not None):
        # NaN/Inf curvature: the operator reports where the products blew up.
        chosen = _by_name(attempts, forced or REVERSE)
        reason = "products are not finite"
    else:
        forward, reverse = attempts
        assert forward.product is not None
        assert reverse.product is not None
        difference, where = relative_difference(forward.product, reverse.product)
        if difference <= agreement_tolerance(_dtype(block)):
            chosen = _by_name(attempts, forced or _faster(forward, reverse))
            reason = f"both routes agree to {difference:.1e} on the first micro-batch; " + (
                "as requested" if forced else f"{chosen.route} was faster there"
            )
        else:
            referee = _referee(kind, mb, probe, attempts)
            chosen = min(attempts, key=lambda a: referee[a.route])
            loser = reverse if chosen is forward else forward
            if forced is not None and forced != chosen.route:
                raise NumericalError(
                    f"{forced} products are wrong for this model: they differ from "
                    f"{chosen.route} by {difference:.1e} (worst in {where}) and from finite "
                    f"differences by {referee[forced]:.1e}",
                    f"use --hvp-method auto (it uses {chosen.route} here)",
                )
            reason = (
                f"the routes disagree by {difference:.1e} (worst in {where}); finite "
                f"differences side with {chosen.route} ({referee[chosen.route]:.1e} vs "
                f"{referee[loser.route]:.1e}), so {loser.route} is not used"
            )
    assert chosen.apply is not None
    assert chosen.product is not None
    symmetry = symmetry_defect(_probes_only(probe, count), _probes_only(chosen.product, count))
    if symmetry > 10 * agreement_tolerance(_dtype(block)):
        raise NumericalError(
            f"the {kind} that {chosen.route} computes is not symmetric (defect {symmetry:.1e}"
            " on the first micro-batch), so torch drops part of the second derivatives: some "
            "operator's backward is not differentiable (e.g. a custom autograd.Function "
            "marked @once_differentiable)",
            "make that backward differentiable, or compute with plain PyTorch operations",
        )
    product = {n: t[:count] for n, t in chosen.product.items()}
    report = RouteReport(
        chosen.route,
        requested,
        reason,
        difference,
        referee,
        seconds,
        symmetry,
        probe_columns(count),
        attention=attention,
    )
    return chosen.apply, product, report, chosen.graph_bytes


def _finite_route(
    kind: str,
    requested: str,
    mb: MicroBatchLoss,
    probe: Params,
    count: int,
    why: str,
    attention: str,
) -> tuple[Apply, Params, RouteReport, int]:
    """Central differences of the gradient, with their error estimated from two step sizes.

    Truncation error grows as h² and round-off as 1/h, so the gap between the products at h
    and 2h is of the size of the error at h (an estimate, reported as such).
    """
    apply, _ = build(kind, FINITE, mb, chunk_size=None)
    try:
        product = apply(probe)
        column = _first_column(probe)
        coarse = (hessian_fd if kind == "hessian" else ggn_fd)(mb, column, scale=2.0)
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
        if is_out_of_memory(exc):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DifferentiationError(
            f"the model cannot be differentiated: {why}; finite differences failed with "
            f"{text[:300]!r}",
            "replace the operator named in the message (e.g. a fused kernel) by a plain "
            "PyTorch one",
        ) from exc
    error = _overall_gap(coarse, _first_column(product))
    symmetry = symmetry_defect(_probes_only(probe, count), _probes_only(product, count))
    if symmetry > 10 * max(agreement_tolerance(_dtype(probe)), error):
        raise NumericalError(
            f"the finite-difference {kind} is not symmetric (defect {symmetry:.1e}, estimated "
            f"error {error:.1e}): the loss is not smooth enough at these weights",
            "use --dtype float64, or make the model differentiable twice",
        )
    reason = (
        "finite differences of the gradient"
        + ("" if why == "as requested" else f", as the last resort: {why}")
        + f"; estimated relative error {error:.1e} (steps h and 2h on the first micro-batch)"
    )
    report = RouteReport(
        FINITE,
        requested,
        reason,
        symmetry=symmetry,
        check_products=2 * _PROBES + 1,
        error=error,
        attention=attention,
    )
    return apply, {n: t[:count] for n, t in product.items()}, report, 0


def _overall_gap(a: Params, b: Params) -> float:
    """‖a − b‖/‖b‖ over all parameters together: the error a whole product carries.

    Not per parameter (as the route check is): in float32 a small block whose entries are
    round-off can differ by 100 % without moving eigenvalues or traces.
    """
    gap = sum(float((a[n] - b[n]).double().square().sum()) for n in b) ** 0.5
    scale = sum(float(b[n].double().square().sum()) for n in b) ** 0.5
    return gap / scale if scale > 0 else 0.0


class _Watch(TorchFunctionMode):
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
    with torch.no_grad(), _Watch() as watch:
        mb.loss(mb.variables)
    return watch.attention


def probe_columns(count: int) -> int:
    """Single-micro-batch products the check spends beyond the ``count`` requested.

    The second route's products on the same columns, and two random probe columns for the
    symmetry check on each route.
    """
    return count + 2 * _PROBES


#: Random columns appended on the first micro-batch for the symmetry check.
_PROBES = 2


def _with_probes(block: Params) -> Params:
    """``block`` with ``_PROBES`` fixed pseudo-random columns appended.

    Random (not the caller's) vectors, because structured ones such as identity columns can
    miss an asymmetry entirely.
    """
    generator = torch.Generator().manual_seed(0)
    return {
        n: torch.cat(
            [
                t,
                torch.randn((_PROBES, *t.shape[1:]), generator=generator, dtype=t.dtype).to(
                    t.device
                ),
            ]
        )
        for n, t in block.items()
    }


def _probes_only(block: Params, count: int) -> Params:
    return {n: t[count:] for n, t in block.items()}


def _faster(forward: _Attempt, reverse: _Attempt) -> str:
    """Reverse unless forward is clearly (20 %) faster.

    The timed call includes building the reverse route's graph, which later calls reuse from
    the cache; the margin keeps the choice from flipping on timing noise between runs.
    """
    return FORWARD if forward.seconds < 0.8 * reverse.seconds else REVERSE


def _finite(product: Params) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in product.values())


def _by_name(attempts: list[_Attempt], route: str) -> _Attempt:
    return next(a for a in attempts if a.route == route)


def _dtype(block: Params) -> torch.dtype:
    return next(iter(block.values())).dtype
