"""``hesscli report``: every quantity, one row per layer, with a summary and flags.

``report`` runs every quantity of the single commands with the same seeds, so its numbers are
theirs, but shares the work: the per-layer traces are sums of the diagonals it computes anyway
(or come from the same Diag++ probes), and the eigenvalue processes of the whole selection and
of every layer advance together with the density's probes, one data pass per Lanczos step.
:func:`measure` is that work; ``check`` and ``compare`` call it too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from hesscli.algorithms.density import DensitySearch
from hesscli.algorithms.eigen import ExtremeSearch
from hesscli.algorithms.lockstep import Member, advance_together
from hesscli.engine.diagonal import COLUMNS, has_fast_route
from hesscli.engine.operator import CurvatureOperator
from hesscli.results import Cost, LayerSummary, Plan, Report, ReportResults, Summary
from hesscli.runs.density import check_density_options, density_of, density_sizes
from hesscli.runs.diag import diag_products_for, layer_diagonals, unit_column_budget
from hesscli.runs.envelope import report_for
from hesscli.runs.flags import layer_flags, model_flags
from hesscli.runs.outcomes import cost_of, eigenvalues_of, engine_of
from hesscli.runs.plans import (
    LARGE_MODEL,
    MAX_STEPS,
    TOLERANCE,
    ZERO_TOLERANCE,
    basis_plan,
    density_basis,
    require_positive,
    seeded_generator,
)
from hesscli.runs.prepare import Prepared, Request, operator_for, prepare
from hesscli.runs.progress import Announce, Progress, quiet, silent

#: ``report`` on a large model: Lanczos steps at most of the per-layer eigenvalue runs, which
#: cost one product per layer and step (unconverged values are flagged).
LARGE_MODEL_LAYER_STEPS = 30


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


def check_report_settings(settings: ReportSettings) -> None:
    """Refuse settings of ``report``, ``check`` or ``compare`` that cannot size a run."""
    check_density_options(settings.probes, settings.steps, settings.points, settings.sigma)
    require_positive(settings.tol, "--tol")
    require_positive(settings.max_steps, "--max-steps")
    require_positive(settings.diag_products, "--diag-products")
    require_positive(settings.lr, "--lr")


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
    progress: Progress = quiet,
    announce: Announce = silent,
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
    common = basis.search_options(op, top_k=1, bottom_k=1, tol=tol)
    hint = op.start_gradient()  # as spectrum: the same start, the same eigenvalues
    whole = ExtremeSearch(
        op.matmat,
        op.size,
        max_steps=limit,
        generator=seeded_generator(seed),
        hint=hint,
        **common,
    )
    per_layer = ExtremeSearch(
        op.block_matmat,
        op.size,
        max_steps=layer_limit,
        blocks=bounds,
        generator=seeded_generator(seed),
        hint=hint,
        **common,
    )
    probes = DensitySearch(
        op.matmat,
        op.size,
        probes=settings.probes,
        steps=settings.steps,
        generator=seeded_generator(seed),
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
    density = density_of(quadrature, points=settings.points, sigma=settings.sigma, tol=zero)
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
    top, bottom = eigenvalues_of(extremes.top)[0], eigenvalues_of(extremes.bottom)[0]
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
            top=eigenvalues_of(found.top)[0],
            bottom=eigenvalues_of(found.bottom)[0],
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
        engine=engine_of(op),
    )
    return results, cost_of(op, start, diagonals.output_space)


def report_options(settings: ReportSettings) -> dict[str, object]:
    """The settings as the envelope's ``settings.options`` records them."""
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
    progress: Progress = quiet,
    announce: Announce = silent,
) -> Report:
    """Every quantity, one row per layer, with a summary and flags; ``announce`` gets the plan."""
    check_report_settings(settings)
    prepared = prepare(request, layer_patterns=layer_patterns)
    results, cost = measure(prepared, settings, progress=progress, announce=announce)
    return report_for("report", prepared, results, cost, report_options(settings))
