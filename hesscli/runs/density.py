"""``hesscli density``: the eigenvalue density by stochastic Lanczos quadrature.

All probes advance in the same data passes (and the per-layer processes too, through the
block-diagonal product). :func:`density_of` turns a quadrature into the smoothed curve and the
negative mass, for ``density`` and ``report`` alike.
"""

from __future__ import annotations

import time

from hesscli.algorithms.density import (
    DensitySearch,
    Quadrature,
    default_sigma,
    grid_for,
    mass_below,
    mass_bracket,
    moment,
    smoothed,
    span,
)
from hesscli.algorithms.lockstep import Member, advance_together
from hesscli.algorithms.ritz import eigenvalue_errors, extremes_of
from hesscli.algorithms.trace import t_quantile_975
from hesscli.errors import ConfigError
from hesscli.results import Density, DensityResults, Eigenvalue, Mass, Report, Trace
from hesscli.runs.envelope import report_for
from hesscli.runs.outcomes import cost_of, eigenvalues_of, engine_of
from hesscli.runs.plans import (
    LARGE_MODEL,
    TOLERANCE,
    ZERO_TOLERANCE,
    density_basis,
    require_positive,
    seeded_generator,
)
from hesscli.runs.prepare import Request, operator_for, prepare
from hesscli.runs.progress import Progress, quiet

#: ``significant_negative_mass`` counts eigenvalues below −this × the largest Ritz value.
SIGNIFICANT = 0.01
#: Default (probes, Lanczos steps) of the density, for small and for large models.
DENSITY_DEFAULTS = {False: (8, 80), True: (4, 40)}


def density_sizes(size: int, probes: int | None, steps: int | None) -> tuple[int, int]:
    """``(probes, steps)``: the ones given, else the defaults for a model of ``size``."""
    default_probes, default_steps = DENSITY_DEFAULTS[size >= LARGE_MODEL]
    return probes or default_probes, steps or default_steps


def check_density_options(
    probes: int | None, steps: int | None, points: int, sigma: float | None
) -> None:
    """Refuse density options that cannot size a run (before anything is loaded)."""
    require_positive(probes, "--probes")
    require_positive(steps, "--steps")
    require_positive(sigma, "--sigma")
    if points < 2:
        raise ConfigError(f"--points must be at least 2, got {points}", "pass --points 400")


def _mass(quadrature: Quadrature, threshold: float) -> Mass:
    """The fraction below −threshold: the quadrature's estimate ± stderr, and its bracket."""
    value, stderr = mass_below(quadrature, -threshold)
    low, high = mass_bracket(quadrature, -threshold)
    return Mass(value, stderr, threshold, low, high)


def density_of(quadrature: Quadrature, *, points: int, sigma: float | None, tol: float) -> Density:
    """Smoothed density, raw quadrature and negative mass of one block."""
    sigma = sigma or default_sigma(quadrature)
    grid = grid_for(quadrature, sigma, points)
    values, stderr = smoothed(quadrature, grid, sigma)
    low, high = span(quadrature)
    threshold = tol * max(abs(low), abs(high))
    significant = SIGNIFICANT * max(high, 0.0)
    keep = quadrature.depths
    return Density(
        grid=grid.tolist(),
        density=values.tolist(),
        stderr=stderr.tolist(),
        sigma=sigma,
        probes=quadrature.probes,
        steps=quadrature.steps,
        nodes=[quadrature.nodes[k, : keep[k]].tolist() for k in range(quadrature.probes)],
        weights=[quadrature.weights[k, : keep[k]].tolist() for k in range(quadrature.probes)],
        negative_mass=_mass(quadrature, threshold),
        significant_negative_mass=_mass(quadrature, significant),
        parameters=quadrature.size,
    )


def _probe_trace(quadrature: Quadrature) -> Trace:
    """P·(mean first moment): the Hutchinson trace of the density's own probes."""
    mean, stderr = moment(quadrature, 1)
    size = quadrature.size
    interval = t_quantile_975(quadrature.probes - 1) * stderr * size
    return Trace(size * mean, size * stderr, False, interval, size)


def run_density(
    request: Request,
    *,
    layer_patterns: list[str],
    probes: int | None = None,
    steps: int | None = None,
    per_layer: bool = False,
    points: int = 400,
    sigma: float | None = None,
    progress: Progress = quiet,
) -> Report:
    """The eigenvalue density of the selected layers (and of each with ``per_layer``).

    ``probes`` Rademacher vectors × ``steps`` Lanczos steps, all probes in the same data
    passes (and the per-layer processes too, through the block-diagonal product).
    """
    check_density_options(probes, steps, points, sigma)
    start = time.perf_counter()
    prepared = prepare(request, layer_patterns=layer_patterns)
    op = operator_for(prepared, columns=(probes or 8) * (2 if per_layer else 1))
    probes, steps = density_sizes(op.size, probes, steps)
    tol = ZERO_TOLERANCE.get(op.dtype, 1e-4)
    eigen_tol = TOLERANCE.get(op.dtype, 1e-4)
    seed = prepared.settings["seed"].value
    bounds = [(b.start, b.stop) for b in op.blocks]
    max_basis = density_basis(op, probes, steps, 2 if per_layer else 1)
    common = {
        "probes": probes,
        "steps": steps,
        "dtype": op.dtype,
        "device": op.device,
        "max_basis": max_basis,
    }
    whole = DensitySearch(op.matmat, op.size, generator=seeded_generator(seed), **common)
    searches = [whole]
    if per_layer:
        searches.append(
            DensitySearch(
                op.block_matmat, op.size, blocks=bounds, generator=seeded_generator(seed), **common
            )
        )
    members = [Member(search, blockwise=search is not whole) for search in searches]
    limit = max(search.limit for search in searches)
    advance_together(
        members,
        op.fused_matmat,
        on_step=lambda done: progress("Lanczos quadrature (all probes)", done, limit),
    )
    (quadrature,) = whole.result()
    density = density_of(quadrature, points=points, sigma=sigma, tol=tol)
    if whole.run.reorthogonalise:
        (extremes,) = extremes_of(whole.run, 3, 1, eigen_tol)  # residual bounds: no more products
        top, bottom = eigenvalues_of(extremes.top), eigenvalues_of(extremes.bottom)
    else:  # no basis, no Ritz vectors: the recurrence's residual estimates
        top, bottom = _quadrature_extremes(quadrature, eigen_tol)
    layers = {}
    if per_layer:
        found = searches[1].result()
        layers = {
            b.name: density_of(q, points=points, sigma=sigma, tol=tol)
            for b, q in zip(op.blocks, found, strict=True)
        }
    results = DensityResults(
        **{f: getattr(density, f) for f in Density.__dataclass_fields__},
        top=top,
        bottom=bottom,
        trace=_probe_trace(quadrature),
        layers=layers,
        engine=engine_of(op),
    )
    options = {
        "probes": probes,
        "steps": steps,
        "per_layer": per_layer,
        "points": points,
        "sigma": sigma,
        "zero_tolerance": tol,
    }
    return report_for("density", prepared, results, cost_of(op, start), options)


def _quadrature_extremes(
    quadrature: Quadrature, tol: float
) -> tuple[list[Eigenvalue], list[Eigenvalue]]:
    """The 3 largest and the smallest node of the first probe, with residual estimates.

    The estimates are the recurrence's |β·s|: no basis was kept to bound them better. A ghost
    copy of a node leaves no gap, so its error stays the residual.
    """
    depth = quadrature.depths[0]
    nodes, residuals = quadrature.nodes[0, :depth], quadrature.residuals[0, :depth]
    scale = float(nodes.abs().max())
    errors = eigenvalue_errors(nodes, residuals, tol * scale)

    def pair(i: int) -> Eigenvalue:
        error = float(errors[i])
        return Eigenvalue(float(nodes[i]), float(residuals[i]), error, error <= tol * scale)

    return [pair(depth - 1 - k) for k in range(min(3, depth))], [pair(0)]
