"""Orchestration of ``density``, ``report`` and ``compare``. No printing.

``report`` runs every quantity of the single commands with the same seeds, so its numbers are
theirs, but shares the work: the per-layer traces are sums of the diagonals it computes anyway
(or come from the same Diag++ probes), and the eigenvalue processes of the whole selection and
of every layer advance together with the density's probes, one data pass per Lanczos step.
"""

from __future__ import annotations

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
from hesscli.algorithms.eigen import ExtremeSearch, extremes_of
from hesscli.algorithms.lockstep import Member, advance_together
from hesscli.algorithms.trace import t_quantile_975
from hesscli.analysis import Prepared, Request, operator_for, prepare, report_for
from hesscli.diagnostics import (
    KEEP_PRODUCTS_BYTES,
    MAX_STEPS,
    TOLERANCE,
    UNIT_COLUMNS_LIMIT,
    Progress,
    _cost,
    _eigenvalues,
    _engine,
    _generator,
    _positive,
    _quiet,
    layer_diagonals,
)
from hesscli.engine.diagonal import COLUMNS, has_fast_route
from hesscli.engine.operator import CurvatureOperator
from hesscli.errors import ConfigError
from hesscli.flags import layer_flags, model_flags
from hesscli.results import (
    Checkpoint,
    CompareResults,
    Cost,
    Density,
    DensityResults,
    LayerSummary,
    Mass,
    Plan,
    Report,
    ReportResults,
    Summary,
    Trace,
)

Announce = Callable[[Plan], None]
#: ``significant_negative_mass`` counts eigenvalues below −this × the largest Ritz value.
SIGNIFICANT = 0.01


def _silent(_plan: Plan) -> None:
    return None


@dataclass(frozen=True)
class ReportSettings:
    """What ``report`` (and ``check``, ``compare``) computes.

    Attributes:
        probes: Probe vectors of the density (stochastic Lanczos quadrature).
        steps: Lanczos steps per probe.
        tol: Eigenvalue residual tolerance relative to ‖C‖ (default by dtype).
        max_steps: Lanczos steps at most for the eigenvalues.
        diag_products: Products for Diag++ when a layer's diagonal is estimated.
        lr: Learning rate, for the stability bound 2/lr of the ``sharp`` flag.
        points: Grid points of the smoothed density.
        sigma: Gaussian width of the smoothing (default: a fraction of the spectrum's span).
    """

    probes: int = 8
    steps: int = 80
    tol: float | None = None
    max_steps: int | None = None
    diag_products: int = 300
    lr: float | None = None
    points: int = 400
    sigma: float | None = None


DEFAULTS = ReportSettings()


def _check_density_options(probes: int, steps: int, points: int, sigma: float | None) -> None:
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
    probes: int = 8,
    steps: int = 80,
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
    op = operator_for(prepared)
    tol = TOLERANCE.get(op.dtype, 1e-4)
    seed = prepared.settings["seed"].value
    bounds = [(b.start, b.stop) for b in op.blocks]
    common = {"probes": probes, "steps": steps, "dtype": op.dtype, "device": op.device}
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
    (extremes,) = extremes_of(whole.run, 3, 1, tol)  # residuals: one more data pass
    top, bottom = _eigenvalues(extremes.top), _eigenvalues(extremes.bottom)
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
    columns_left = UNIT_COLUMNS_LIMIT
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
    op = operator_for(prepared)
    seed = prepared.settings["seed"].value
    tol = settings.tol or TOLERANCE.get(op.dtype, 1e-4)
    limit = min(op.size, settings.max_steps or MAX_STEPS)
    keep = 2 * limit * op.size * op.dtype.itemsize <= KEEP_PRODUCTS_BYTES
    blocks = list(op.blocks)
    bounds = [(b.start, b.stop) for b in blocks]
    common = {"top_k": 1, "bottom_k": 1, "tol": tol, "dtype": op.dtype, "device": op.device}
    whole = ExtremeSearch(
        op.matmat,
        op.size,
        max_steps=limit,
        generator=_generator(seed),
        keep_products=keep,
        **common,
    )
    per_layer = ExtremeSearch(
        op.block_matmat,
        op.size,
        max_steps=min(max(b.size for b in blocks), limit),
        blocks=bounds,
        generator=_generator(seed),
        keep_products=keep,
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
    )
    members = [Member(whole), Member(per_layer, blockwise=True), Member(probes)]
    expected = probes.limit  # the eigenvalue runs usually converge within it
    diag_passes, diag_products = _diagonal_plan(op, settings.diag_products)
    width = settings.probes + 1 + len(blocks)
    passes = expected + diag_passes
    planned = [Plan(passes, expected * width + diag_products, math.nan, math.nan)]
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
    density = _density(quadrature, points=settings.points, sigma=settings.sigma, tol=tol)
    diagonals = layer_diagonals(
        op,
        mode="auto",
        products=settings.diag_products,
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
