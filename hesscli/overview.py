"""Orchestration of ``density``, ``report`` and ``compare``. No printing.

``report`` runs every quantity of the single commands with the same seeds, so its numbers are
theirs, but shares the work: the per-layer traces are sums of the diagonals it computes anyway
(or come from the same Diag++ probes), and the eigenvalue processes of the whole selection and
of every layer advance together with the density's probes, one data pass per Lanczos step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

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
from hesscli.algorithms.eigen import ExtremeSearch, eigenvalue_errors, extremes_of
from hesscli.algorithms.lanczos import lanczos_bytes
from hesscli.algorithms.lockstep import Member, advance_together
from hesscli.algorithms.trace import t_quantile_975
from hesscli.analysis import Prepared, Request, operator_for, prepare, report_for
from hesscli.diagnostics import (
    LARGE_MODEL,
    MAX_STEPS,
    TOLERANCE,
    ZERO_TOLERANCE,
    Progress,
    _cost,
    _eigenvalues,
    _engine,
    _generator,
    _positive,
    _quiet,
    basis_plan,
    diag_products_for,
    layer_diagonals,
    unit_column_budget,
)
from hesscli.engine.diagonal import COLUMNS, has_fast_route
from hesscli.engine.memory import format_size
from hesscli.engine.operator import CurvatureOperator
from hesscli.errors import ConfigError
from hesscli.flags import layer_flags, model_flags
from hesscli.results import (
    Checkpoint,
    CompareResults,
    Cost,
    Density,
    DensityResults,
    Eigenvalue,
    LayerSummary,
    Mass,
    Plan,
    Report,
    ReportResults,
    Summary,
    Trace,
)

log = logging.getLogger("hesscli")
Announce = Callable[[Plan], None]
#: ``significant_negative_mass`` counts eigenvalues below −this × the largest Ritz value.
SIGNIFICANT = 0.01


def _silent(_plan: Plan) -> None:
    return None


@dataclass(frozen=True)
class ReportSettings:
    """What ``report`` (and ``check``, ``compare``) computes.

    Attributes:
        probes: Probe vectors of the density (stochastic Lanczos quadrature); default by
            model size (:func:`density_sizes`).
        steps: Lanczos steps per probe; default by model size.
        tol: Tolerance on the eigenvalues' errors relative to ‖C‖ (default by dtype), and the
            density's zero (default: 1e-7 in float64, 1e-4 in float32).
        max_steps: Lanczos steps at most for the eigenvalues.
        diag_products: Products for Diag++ when a layer's diagonal is estimated.
        lr: Learning rate, for the stability bound 2/lr of the ``sharp`` flag.
        points: Grid points of the smoothed density.
        sigma: Gaussian width of the smoothing (default: a fraction of the spectrum's span).
    """

    probes: int | None = None
    steps: int | None = None
    tol: float | None = None
    max_steps: int | None = None
    diag_products: int | None = None
    lr: float | None = None
    points: int = 400
    sigma: float | None = None


DEFAULTS = ReportSettings()
#: Default (probes, Lanczos steps) of the density, for small and for large models.
DENSITY_DEFAULTS = {False: (8, 80), True: (4, 40)}
#: ``report`` on a large model: Lanczos steps at most of the per-layer eigenvalue runs, which
#: cost one product per layer and step (unconverged values are flagged).
LARGE_MODEL_LAYER_STEPS = 30


def density_sizes(size: int, probes: int | None, steps: int | None) -> tuple[int, int]:
    """``(probes, steps)``: the ones given, else the defaults for a model of ``size``."""
    default_probes, default_steps = DENSITY_DEFAULTS[size >= LARGE_MODEL]
    return probes or default_probes, steps or default_steps


def density_basis(op: CurvatureOperator, probes: int, steps: int, runs: int) -> int | None:
    """``max_basis`` of ``runs`` density runs, its bytes reserved in the operator's plan.

    None (full reorthogonalisation) when the bases fit the memory plan, else 2 (the three-term
    recurrence, see :mod:`~hesscli.algorithms.density`).
    """
    full = runs * lanczos_bytes(op.size, probes, steps + 1, op.dtype)
    if full <= op.spare_bytes():
        op.reserve(full)
        return None
    op.reserve(runs * lanczos_bytes(op.size, probes, 2, op.dtype))
    log.info(
        "the density's Lanczos bases (%s) do not fit the budget: no reorthogonalisation",
        format_size(full),
    )
    return 2


def _check_density_options(
    probes: int | None, steps: int | None, points: int, sigma: float | None
) -> None:
    _positive(probes, "--probes")
    _positive(steps, "--steps")
    _positive(sigma, "--sigma")
    if points < 2:
        raise ConfigError(f"--points must be at least 2, got {points}", "pass --points 400")


def _mass(quadrature: Quadrature, threshold: float) -> Mass:
    """The fraction below −threshold: the quadrature's estimate ± stderr, and its bracket."""
    value, stderr = mass_below(quadrature, -threshold)
    low, high = mass_bracket(quadrature, -threshold)
    return Mass(value, stderr, threshold, low, high)


def _density(quadrature: Quadrature, *, points: int, sigma: float | None, tol: float) -> Density:
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
    progress: Progress = _quiet,
) -> Report:
    """The eigenvalue density of the selected layers (and of each with ``per_layer``).

    ``probes`` Rademacher vectors × ``steps`` Lanczos steps, all probes in the same data
    passes (and the per-layer processes too, through the block-diagonal product).
    """
    _check_density_options(probes, steps, points, sigma)
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
    whole = DensitySearch(op.matmat, op.size, generator=_generator(seed), **common)
    searches = [whole]
    if per_layer:
        searches.append(
            DensitySearch(
                op.block_matmat, op.size, blocks=bounds, generator=_generator(seed), **common
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
    density = _density(quadrature, points=points, sigma=sigma, tol=tol)
    if whole.run.reorthogonalise:
        (extremes,) = extremes_of(whole.run, 3, 1, eigen_tol)  # residual bounds: no more products
        top, bottom = _eigenvalues(extremes.top), _eigenvalues(extremes.bottom)
    else:  # no basis, no Ritz vectors: the recurrence's residual estimates
        top, bottom = _quadrature_extremes(quadrature, eigen_tol)
    layers = {}
    if per_layer:
        found = searches[1].result()
        layers = {
            b.name: _density(q, points=points, sigma=sigma, tol=tol)
            for b, q in zip(op.blocks, found, strict=True)
        }
    results = DensityResults(
        **{f: getattr(density, f) for f in Density.__dataclass_fields__},
        top=top,
        bottom=bottom,
        trace=_probe_trace(quadrature),
        layers=layers,
        engine=_engine(op),
    )
    options = {
        "probes": probes,
        "steps": steps,
        "per_layer": per_layer,
        "points": points,
        "sigma": sigma,
        "zero_tolerance": tol,
    }
    return report_for("density", prepared, results, _cost(op, start), options)


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


def _check_settings(settings: ReportSettings) -> None:
    _check_density_options(settings.probes, settings.steps, settings.points, settings.sigma)
    _positive(settings.tol, "--tol")
    _positive(settings.max_steps, "--max-steps")
    _positive(settings.diag_products, "--diag-products")
    _positive(settings.lr, "--lr")


def _diagonal_plan(op: CurvatureOperator, products: int) -> tuple[int, int]:
    """(data passes, products) the diagonal phase will spend, by the route each layer takes."""
    passes = spent = 0
    estimated = False
    columns_left = unit_column_budget(op)
    for block in op.blocks:
        if has_fast_route(op, block):
            passes += 1
        elif block.size <= columns_left:
            passes += -(-block.size // COLUMNS)
            spent += block.size
            columns_left -= block.size
        else:
            estimated = True
    if estimated:
        passes += 2 + -(-products // 8)
        spent += products
    return passes, spent


def measure(
    prepared: Prepared,
    settings: ReportSettings,
    *,
    progress: Progress = _quiet,
    announce: Announce = _silent,
) -> tuple[ReportResults, Cost]:
    """Every quantity of ``report`` on a prepared problem, sharing data passes, and its cost.

    Phase 1 steps, in lockstep and one data pass per step, the whole-selection Lanczos run of
    ``spectrum --top-k 1 --bottom-k 1``, the per-layer runs of ``--per-layer``, and the
    density's probes; the plan is announced after its first pass (which times a pass). Phase 2
    computes the diagonals of ``diag`` (exact where affordable); the layers' traces are their
    sums, or Hutch++ from the same Diag++ probes.
    """
    start = time.perf_counter()
    # Every layer's own Lanczos column lives on that layer's rows only: together they are one
    # parameter-length column of a pass, not one per layer (which on a 100-layer transformer
    # asked for 21.6 GiB and refused an 8 GiB budget).
    op = operator_for(prepared, columns=2 + (settings.probes or 8) + 1)
    sizes = density_sizes(op.size, settings.probes, settings.steps)
    diag_products = diag_products_for(op.size, settings.diag_products, "--diag-products")
    settings = replace(settings, probes=sizes[0], steps=sizes[1], diag_products=diag_products)
    assert settings.probes is not None
    assert settings.steps is not None
    seed = prepared.settings["seed"].value
    tol = settings.tol or TOLERANCE.get(op.dtype, 1e-4)
    limit = min(op.size, settings.max_steps or MAX_STEPS)
    blocks = list(op.blocks)
    layer_limit = min(max(b.size for b in blocks), limit)
    if op.size >= LARGE_MODEL and settings.max_steps is None:
        layer_limit = min(layer_limit, LARGE_MODEL_LAYER_STEPS)
    before = op.spare_bytes()
    max_basis = density_basis(op, settings.probes, settings.steps, 1)
    basis = basis_plan(op, steps=limit, wanted=2, runs=2)  # whole and per-layer runs
    lanczos = before - op.spare_bytes()
    bounds = [(b.start, b.stop) for b in blocks]
    common = {
        "top_k": 1,
        "bottom_k": 1,
        "tol": tol,
        "dtype": op.dtype,
        "device": op.device,
        "keep_products": basis.keep_products,
        "max_basis": basis.max_basis,
    }
    whole = ExtremeSearch(
        op.matmat,
        op.size,
        max_steps=limit,
        generator=_generator(seed),
        **common,
    )
    per_layer = ExtremeSearch(
        op.block_matmat,
        op.size,
        max_steps=layer_limit,
        blocks=bounds,
        generator=_generator(seed),
        **common,
    )
    probes = DensitySearch(
        op.matmat,
        op.size,
        probes=settings.probes,
        steps=settings.steps,
        generator=_generator(seed),
        dtype=op.dtype,
        device=op.device,
        max_basis=max_basis,
    )
    members = [Member(whole), Member(per_layer, blockwise=True), Member(probes)]
    expected = probes.limit  # the eigenvalue runs usually converge within it
    diag_passes, diag_spent = _diagonal_plan(op, diag_products)
    width = settings.probes + 1 + len(blocks)
    passes = expected + diag_passes
    held = op.memory.estimate + op.memory.reserve if op.memory is not None else 0
    planned = [Plan(passes, expected * width + diag_spent, math.nan, math.nan, held)]
    lockstep_start = time.perf_counter()

    def on_step(done: int) -> None:
        nonlocal lockstep_start
        if done == 1:  # the first pass also checks the route: time the second one
            lockstep_start = time.perf_counter()
        elif done == 2:
            seconds = time.perf_counter() - lockstep_start
            planned[0] = replace(planned[0], seconds=passes * seconds, pass_seconds=seconds)
            announce(planned[0])
        progress("Lanczos: eigenvalues and density", done, expected)

    advance_together(members, op.fused_matmat, on_step=on_step)
    (extremes,) = whole.result()
    layer_extremes = per_layer.result()
    (quadrature,) = probes.result()
    zero = settings.tol or ZERO_TOLERANCE.get(op.dtype, 1e-4)
    density = _density(quadrature, points=settings.points, sigma=settings.sigma, tol=zero)
    del whole, per_layer, probes, members  # their bases: the diagonals may use the room
    op.free(lanczos)
    diagonals = layer_diagonals(
        op,
        mode="auto",
        products=diag_products,
        largest=5,
        seed=int(seed or 0),
        progress=progress,
    )
    top, bottom = _eigenvalues(extremes.top)[0], _eigenvalues(extremes.bottom)[0]
    trace = diagonals.total
    summary = Summary(
        top=top,
        bottom=bottom,
        trace=trace,
        ratio=bottom.value / top.value if top.value else math.nan,
        negative_mass=density.negative_mass,
        significant_negative_mass=density.significant_negative_mass,
        trace_per_parameter=trace.value / op.size,
        trace_per_parameter_stderr=trace.stderr / op.size,
    )
    layers = {}
    flags = model_flags(summary, lr=settings.lr)
    for block, found in zip(blocks, layer_extremes, strict=True):
        row = LayerSummary(
            parameters=block.size,
            trace=diagonals.traces[block.name],
            top=_eigenvalues(found.top)[0],
            bottom=_eigenvalues(found.bottom)[0],
            diagonal=diagonals.summaries[block.name],
            flags=[],
        )
        raised = layer_flags(block.name, row, summary, layers=len(blocks))
        layers[block.name] = replace(row, flags=[f.name for f in raised])
        flags += raised
    results = ReportResults(
        summary=summary,
        layers=layers,
        density=density,
        flags=flags,
        plan=planned[0],
        engine=_engine(op),
    )
    return results, _cost(op, start, diagonals.output_space)


def _options(settings: ReportSettings) -> dict[str, object]:
    return {
        "probes": settings.probes,
        "steps": settings.steps,
        "tol": settings.tol,
        "max_steps": settings.max_steps,
        "diag_products": settings.diag_products,
        "lr": settings.lr,
        "stability_bound": None if settings.lr is None else 2 / settings.lr,
        "points": settings.points,
        "sigma": settings.sigma,
    }


def run_report(
    request: Request,
    *,
    layer_patterns: list[str],
    settings: ReportSettings = DEFAULTS,
    progress: Progress = _quiet,
    announce: Announce = _silent,
) -> Report:
    """Every quantity, one row per layer, with a summary and flags; ``announce`` gets the plan."""
    _check_settings(settings)
    prepared = prepare(request, layer_patterns=layer_patterns)
    results, cost = measure(prepared, settings, progress=progress, announce=announce)
    return report_for("report", prepared, results, cost, _options(settings))


def run_compare(
    request: Request,
    *,
    checkpoints: list[str],
    layer_patterns: list[str],
    settings: ReportSettings = DEFAULTS,
    progress: Progress = _quiet,
    announce: Announce = _silent,
) -> Report:
    """The report's summary, layers and flags for each checkpoint of one model, in order."""
    if len(checkpoints) < 2:
        raise ConfigError(
            f"compare needs at least two checkpoints, got {len(checkpoints)}",
            "pass two or more checkpoint files (or use report for one)",
        )
    _check_settings(settings)
    start = time.perf_counter()
    entries: list[Checkpoint] = []
    first: Prepared | None = None
    files: list[str] = []
    for path in checkpoints:
        options = {**request.options, "checkpoint": path}
        prepared = prepare(replace(request, options=options), layer_patterns=layer_patterns)
        first = first or prepared
        found, cost = measure(prepared, settings, progress=progress, announce=announce)
        entries.append(
            Checkpoint(
                checkpoint=str(prepared.problem.checkpoint.path),
                summary=found.summary,
                layers=found.layers,
                flags=found.flags,
                cost=cost,
            )
        )
        files.append(str(prepared.problem.checkpoint.path))
    assert first is not None
    total = Cost(
        seconds=time.perf_counter() - start,
        hvps=sum(e.cost.hvps for e in entries),
        data_passes=sum(e.cost.data_passes for e in entries),
        check_hvps=sum(e.cost.check_hvps for e in entries),
        output_space_products=sum(e.cost.output_space_products for e in entries),
    )
    results = CompareResults(checkpoints=entries, engine=found.engine)
    report = report_for("compare", first, results, total, _options(settings))
    return replace(report, input_files=tuple({*report.input_files, *files}))
