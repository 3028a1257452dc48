"""Choosing, and checking, the differentiation route on a slice of the first micro-batch.

The routes themselves, their report and the slice are :mod:`.routes`'s; this module runs the
check that picks a route on the slice wherever double backward cannot be judged by its own
first products (a forced forward or finite-difference route, a model without double
backward, several ranks).

Forward-mode rules are missing for some operators and silently wrong for others (``layer_norm``
in some compositions, pytorch #196700), while double backward is missing for some fused kernels
and silently incomplete behind a ``once_differentiable`` backward. The route is chosen by a rule,
never by timing, so the same inputs always take the same route and give the same bits:

- ``auto`` uses **reverse-over-reverse** (double backward), which has no forward-mode rules to
  get wrong. Only when the model has no double-backward rule does it fall back to
  forward-over-reverse, checked against central finite differences of first derivatives, and
  then to finite differences themselves.
- ``forward`` is checked against double backward (finite differences referee a disagreement);
  ``reverse`` and ``fd`` are used as asked.

Every check runs on the first :data:`~.routes.CHECK_SAMPLES` samples of the first
micro-batch, with two random probe columns, and only on the routes that can be used; the
chosen route's probe products must be symmetric (uᵀCv = vᵀCu), which catches what no agreement
can: a ``once_differentiable`` backward that silently drops second derivatives. The outcome is
reported, so no number is silently wrong.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hesscli.engine.device import synchronize
from hesscli.engine.device_memory import is_out_of_memory
from hesscli.engine.functional import Params
from hesscli.engine.products import MicroBatchLoss, ggn_fd, hessian_fd
from hesscli.engine.routes import (
    FINITE,
    FORWARD,
    MATH_ATTENTION,
    METHODS,
    MISSING_RULE,
    REVERSE,
    RouteReport,
    build,
    check_slice,
    relative_difference,
    reverse_reason,
    uses_attention,
)
from hesscli.engine.symmetry import (
    agreement_tolerance,
    asymmetry_error,
    symmetry_defect,
    too_large,
)
from hesscli.errors import DifferentiationError, NumericalError, first_line

#: Random columns of the symmetry check.
_PROBES = 2


@dataclass
class _Attempt:
    route: str
    product: Params | None = None
    seconds: float = 0.0
    error: str = ""


def _attempt(kind: str, route: str, mb: MicroBatchLoss, probe: Params) -> _Attempt:
    """The route's products of ``probe`` on ``mb``, or the first line of why it cannot run."""
    start = time.perf_counter()
    try:  # one column per vmap call: the check must not need more memory than the products
        apply, _ = build(kind, route, mb, chunk_size=1)
        product = apply(probe)
    except MISSING_RULE as exc:
        if is_out_of_memory(exc):  # the operator retries smaller; not a missing rule
            raise
        return _Attempt(route, error=first_line(exc, limit=300))
    synchronize(next(iter(probe.values())).device)  # the kernels are done before the timer
    return _Attempt(route, product, time.perf_counter() - start)


def _first_column(block: Params) -> Params:
    return {n: t[0] for n, t in block.items()}


def select_route(
    kind: str, requested: str, mb: MicroBatchLoss, *, chunk_size: int | None = None
) -> RouteReport:
    """Choose the route by rule and check it on a slice of ``mb`` (see the module docstring).

    Raises:
        DifferentiationError: when no route can differentiate the model twice, or the route the
            user forced cannot.
        NumericalError: when the forced route is the wrong one, or the curvature the chosen
            route gives is not symmetric.
    """
    del chunk_size  # the check runs one column at a time
    forced = METHODS[requested]
    sliced = check_slice(mb)
    probe = _probes(sliced.variables)
    attention = MATH_ATTENTION if uses_attention(sliced) else ""
    if forced == FINITE:
        return _finite_route(kind, requested, sliced, probe, "as requested", attention)
    if forced == FORWARD:
        return _checked_forward(kind, requested, sliced, probe, attention)
    reverse = _attempt(kind, REVERSE, sliced, probe)
    if reverse.error:
        if forced == REVERSE:
            raise DifferentiationError(
                f"--hvp-method reverse is unavailable for this model: {reverse.error}",
                "use --hvp-method auto (it falls back to the route that works)",
            )
        forward = _attempt(kind, FORWARD, sliced, probe)
        if forward.error:
            failures = f"{REVERSE} failed with {reverse.error!r}; {FORWARD} failed with " + repr(
                forward.error
            )
            return _finite_route(kind, requested, sliced, probe, failures, attention)
        return _forward_fallback(kind, requested, sliced, probe, forward, reverse, attention)
    return _report(
        kind,
        reverse,
        requested,
        reverse_reason(requested) + _checked_on(sliced),
        probe,
        attention,
        1,
        {},
        None,
    )


def _checked_on(mb: MicroBatchLoss) -> str:
    return f"; checked on {mb.batch.size} samples of the first micro-batch"


def _report(
    kind: str,
    chosen: _Attempt,
    requested: str,
    reason: str,
    probe: Params,
    attention: str,
    attempts: int,
    referee: dict[str, float],
    difference: float | None,
) -> RouteReport:
    """The report for ``chosen``, once its probe products pass the symmetry check."""
    assert chosen.product is not None
    # NaN/Inf curvature is not judged here: the operator says where the products blow up.
    symmetry = symmetry_defect(probe, chosen.product) if _finite(chosen.product) else 0.0
    if too_large(symmetry, _dtype(probe)):
        raise asymmetry_error(kind, chosen.route, symmetry, "on the first micro-batch")
    return RouteReport(
        chosen.route,
        requested,
        reason,
        difference,
        referee,
        {chosen.route: chosen.seconds},
        symmetry,
        attempts * _PROBES,
        attention=attention,
    )


def _checked_forward(
    kind: str, requested: str, mb: MicroBatchLoss, probe: Params, attention: str
) -> RouteReport:
    """Forward-over-reverse as asked, checked against double backward on the slice."""
    forward = _attempt(kind, FORWARD, mb, probe)
    if forward.error:
        raise DifferentiationError(
            f"--hvp-method forward is unavailable for this model: {forward.error}",
            "use --hvp-method auto (it falls back to the route that works)",
        )
    reverse = _attempt(kind, REVERSE, mb, probe)
    if reverse.error:
        return _forward_fallback(kind, requested, mb, probe, forward, reverse, attention)
    assert forward.product is not None
    assert reverse.product is not None
    if not (_finite(forward.product) and _finite(reverse.product)):
        return _report(kind, forward, requested, "as requested", probe, attention, 2, {}, None)
    difference, where = relative_difference(forward.product, reverse.product)
    if difference <= agreement_tolerance(_dtype(probe)):
        reason = f"as requested; it agrees with double backward to {difference:.1e}"
        return _report(
            kind, forward, requested, reason + _checked_on(mb), probe, attention, 2, {}, difference
        )
    referee = _referee(kind, mb, probe, [forward, reverse])
    if referee[FORWARD] > referee[REVERSE]:
        raise NumericalError(
            f"{FORWARD} products are wrong for this model: they differ from {REVERSE} by "
            f"{difference:.1e} (worst in {where}) and from finite differences by "
            f"{referee[FORWARD]:.1e}",
            f"use --hvp-method auto (it uses {REVERSE})",
        )
    reason = (
        f"as requested; it differs from double backward by {difference:.1e} (worst in "
        f"{where}), and finite differences side with it ({referee[FORWARD]:.1e} vs "
        f"{referee[REVERSE]:.1e})"
    )
    return _report(kind, forward, requested, reason, probe, attention, 3, referee, difference)


def _forward_fallback(
    kind: str,
    requested: str,
    mb: MicroBatchLoss,
    probe: Params,
    forward: _Attempt,
    reverse: _Attempt,
    attention: str,
) -> RouteReport:
    """Forward-over-reverse where double backward cannot run, refereed by finite differences.

    Finite differences carry their own error (estimated from steps h and 2h); forward-mode
    products further from them than ten times that are refused.
    """
    referee = _referee(kind, mb, probe, [forward])
    error = _fd_error(kind, mb, probe)
    bound = 10 * max(error, agreement_tolerance(_dtype(probe)))
    if referee[FORWARD] > bound:
        raise NumericalError(
            f"{FORWARD} products differ from finite differences by {referee[FORWARD]:.1e} "
            f"(their own error is about {error:.1e}), and double backward is unavailable "
            f"({reverse.error})",
            "use --hvp-method fd with --dtype float64",
        )
    reason = (
        f"{REVERSE} is unavailable ({reverse.error}); forward-mode products agree with finite "
        f"differences to {referee[FORWARD]:.1e}"
    )
    return _report(
        kind, forward, requested, reason + _checked_on(mb), probe, attention, 3, referee, None
    )


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


def _fd_error(kind: str, mb: MicroBatchLoss, block: Params) -> float:
    """The gap between central differences at steps h and 2h: about their error at h."""
    single = hessian_fd if kind == "hessian" else ggn_fd
    column = _first_column(block)
    return _overall_gap(single(mb, column, scale=2.0), single(mb, column))


def _finite_route(
    kind: str,
    requested: str,
    mb: MicroBatchLoss,
    probe: Params,
    why: str,
    attention: str,
) -> RouteReport:
    """Central differences of the gradient, with their error estimated from two step sizes.

    Truncation error grows as h² and round-off as 1/h, so the gap between the products at h
    and 2h is of the size of the error at h (an estimate, reported as such).
    """
    apply, _ = build(kind, FINITE, mb, chunk_size=None)
    try:
        product = apply(probe)
        column = _first_column(probe)
        coarse = (hessian_fd if kind == "hessian" else ggn_fd)(mb, column, scale=2.0)
    except MISSING_RULE as exc:
        if is_out_of_memory(exc):
            raise
        raise DifferentiationError(
            f"the model cannot be differentiated: {why}; finite differences failed with "
            f"{first_line(exc, limit=300)!r}",
            "replace the operator named in the message (e.g. a fused kernel) by a plain "
            "PyTorch one",
        ) from exc
    error = _overall_gap(coarse, _first_column(product))
    symmetry = symmetry_defect(probe, product)
    if too_large(symmetry, _dtype(probe), error):
        raise NumericalError(
            f"the finite-difference {kind} is not symmetric (defect {symmetry:.1e}, estimated "
            f"error {error:.1e}): the loss is not smooth enough at these weights",
            "use --dtype float64, or make the model differentiable twice",
        )
    reason = (
        "finite differences of the gradient"
        + ("" if why == "as requested" else f", as the last resort: {why}")
        + f"; estimated relative error {error:.1e} (steps h and 2h on the first micro-batch)"
        + _checked_on(mb)
    )
    report = RouteReport(
        FINITE,
        requested,
        reason,
        symmetry=symmetry,
        check_products=_PROBES + 1,
        error=error,
        attention=attention,
    )
    return report


def _overall_gap(a: Params, b: Params) -> float:
    """‖a − b‖/‖b‖ over all parameters together: the error a whole product carries.

    Not per parameter (as the route check is): in float32 a small block whose entries are
    round-off can differ by 100 % without moving eigenvalues or traces.
    """
    gap = sum(float((a[n] - b[n]).double().square().sum()) for n in b) ** 0.5
    scale = sum(float(b[n].double().square().sum()) for n in b) ** 0.5
    return gap / scale if scale > 0 else 0.0


def _probes(variables: Params) -> Params:
    """``_PROBES`` fixed pseudo-random columns (seed 0, drawn on the CPU in the working dtype).

    Random vectors, because structured ones such as identity columns can miss an asymmetry
    entirely; drawn on the CPU so that the check is the same on every device.
    """
    generator = torch.Generator().manual_seed(0)
    return {
        n: torch.randn((_PROBES, *t.shape), generator=generator, dtype=t.dtype).to(t.device)
        for n, t in variables.items()
    }


def _finite(product: Params) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in product.values())


def _dtype(block: Params) -> torch.dtype:
    return next(iter(block.values())).dtype
