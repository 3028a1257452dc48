"""Result objects from what the engine and the algorithms hand back.

Every curvature command reports the differentiation route it used (:func:`engine_of`), its
cost (:func:`cost_of`), and eigenvalues and traces in the shapes of :mod:`hesscli.results`.
"""

from __future__ import annotations

import time

from hesscli.algorithms.ritz import Eigenpair
from hesscli.algorithms.trace import TraceEstimate
from hesscli.engine.operator import CurvatureOperator
from hesscli.results import Cost, Eigenvalue, Engine, Trace


def engine_of(op: CurvatureOperator) -> Engine:
    """The differentiation route ``op`` used and the evidence for it."""
    if op.route is None:
        return Engine("none", "no parameter-space product was needed (layer-output routes)")
    return Engine(op.route.route, op.route.reason, op.route.error, op.route.attention)


def cost_of(op: CurvatureOperator, start: float, output_space: int = 0) -> Cost:
    """Seconds since ``start`` and the products and data passes ``op`` spent."""
    return Cost(
        seconds=time.perf_counter() - start,
        hvps=op.counters.products,
        data_passes=op.counters.data_passes,
        check_hvps=op.counters.check_products,
        output_space_products=output_space,
    )


def eigenvalues_of(pairs: tuple[Eigenpair, ...]) -> list[Eigenvalue]:
    """Eigenpairs as reported: value, residual, error bound, converged."""
    return [Eigenvalue(p.value, p.residual, p.error, p.converged) for p in pairs]


def trace_of(estimate: TraceEstimate, parameters: int) -> Trace:
    """A trace estimate as reported, with the parameter count it covers."""
    return Trace(estimate.value, estimate.stderr, estimate.exact, estimate.interval, parameters)
