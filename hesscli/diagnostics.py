"""Orchestration of the curvature commands: spectrum, trace and diag. No printing.

Each ``run_*`` loads the problem (:func:`hesscli.analysis.prepare`), builds the curvature
operator over the selected layers, hands its matmat to an algorithm, and wraps what comes back
in the result objects of :mod:`hesscli.results`. Progress reaches the caller through
``progress(description, done, total)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from hesscli.algorithms.diagonal import MIN_PROBES, diagonal_stats, estimate_diagonal
from hesscli.algorithms.eigen import Eigenpair, Extremes, extreme_eigenvalues
from hesscli.algorithms.lanczos import lanczos_bytes
from hesscli.algorithms.trace import (
    TraceEstimate,
    estimate_trace,
    traces_from_diagonal,
    traces_from_probes,
)
from hesscli.analysis import Request, operator_for, prepare, report_for
from hesscli.engine.diagonal import exact_diagonal, has_fast_route
from hesscli.engine.layout import Block
from hesscli.engine.memory import format_size
from hesscli.engine.operator import CurvatureOperator
from hesscli.errors import ConfigError, MemoryLimitError
from hesscli.results import (
    Cost,
    DiagonalEntry,
    DiagonalResults,
    DiagonalSummary,
    Eigenvalue,
    Engine,
    Report,
    Spectrum,
    SpectrumResults,
    Trace,
    TraceResults,
)

log = logging.getLogger("hesscli")
Progress = Callable[[str, int, int], None]
#: Default tolerance on an eigenvalue's error relative to ‖C‖, by dtype (≈ what its products
#: allow). A value in a cluster, where no gap sharpens the estimate, needs its residual this
#: small; a separated one is usually far more accurate than its estimate says.
TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}
#: Below −tol·‖C‖ an eigenvalue counts as negative (density's negative mass), by dtype.
ZERO_TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-4}
#: A loop predicted to take longer than this many seconds announces its plan.
LONG_RUN_SECONDS = 10.0
#: Lanczos steps at most, unless ``--max-steps`` says otherwise.
MAX_STEPS = 300
#: Keep Lanczos products (exact residuals for free) while they fit in this many bytes.
KEEP_PRODUCTS_BYTES = 1 << 30
#: ``trace``: without a budget, exact below this many parameters.
EXACT_TRACE_PARAMETERS = 64
#: ``trace``: products at most when the user gives no budget (the target may stop it sooner).
#: About 200 gradients' worth: minutes on a 22M-parameter transformer on a 2-core CPU, with a
#: standard error reported; ``--products`` buys more.
DEFAULT_TRACE_PRODUCTS = 100
#: ``diag`` in auto mode: unit columns all layers together may spend (and output-space products
#: one layer may spend per micro-batch) before the remaining layers are estimated instead, on a
#: model below :data:`LARGE_MODEL` parameters. On a larger one a product costs seconds, so
#: layers without a fast exact route are estimated (``--exact`` still forces it).
UNIT_COLUMNS_LIMIT = 4096
#: From this many parameters on a model is of real size: defaults that would take hours there
#: (unit columns, 8 × 80 density probes, 300 Diag++ products) shrink to minutes on a CPU.
LARGE_MODEL = 1_000_000
#: Default Diag++ products (shared by every estimated layer), small and large models.
DIAG_PRODUCTS = {False: 300, True: 150}


def diag_products_for(
    size: int, products: int | None, option: str = "--products", *, estimated: bool = True
) -> int:
    """``products`` if given (refused when too few for Diag++), else the default budget.

    Diag++ gives a third of its budget to the sketch and its product; at least
    :data:`~hesscli.algorithms.diagonal.MIN_PROBES` probes must be left, which every budget
    from three times that guarantees.
    """
    if estimated and products is not None and products - 2 * (products // 3) < MIN_PROBES:
        raise ConfigError(
            f"{option} {products} is too small for a Diag++ estimate: a third goes to the "
            f"sketch and at least {MIN_PROBES} probes must be left",
            f"pass {option} {3 * MIN_PROBES} or more, or --exact",
        )
    return products or DIAG_PRODUCTS[size >= LARGE_MODEL]


def unit_column_budget(op: CurvatureOperator) -> int:
    """Unit columns (and output-space products per layer) ``diag`` auto may spend on ``op``."""
    return UNIT_COLUMNS_LIMIT if op.size < LARGE_MODEL else 0


TRACE_METHODS = ("auto", "exact", "hutch++", "hutchinson")
DIAG_MODES = ("auto", "exact", "estimate")


def _quiet(_description: str, _done: int, _total: int) -> None:
    return None


def planned(
    op: CurvatureOperator, progress: Progress, description: str, passes: int, columns: int
) -> Callable[[int, int], None]:
    """A step callback that announces the plan of a long loop once its second pass is timed.

    The first pass also checks the differentiation route, so the second one gives the time
    per pass; a loop predicted to run longer than :data:`LONG_RUN_SECONDS` says so on stderr
    (logger ``hesscli``) before it goes on.
    """
    seen: list[float] = []

    def step(done: int, total: int) -> None:
        seen.append(op.counters.seconds)
        if len(seen) == 2:
            per_pass = seen[1] - seen[0]
            if (passes - 2) * per_pass > LONG_RUN_SECONDS:
                log.info(
                    "plan: %s, at most %d data passes (%d products), ≈%.0f s more at %.2f s "
                    "per pass, %s",
                    description,
                    passes,
                    passes * columns,
                    (passes - 2) * per_pass,
                    per_pass,
                    planned_bytes(op),
                )
        progress(description, done, total)

    return step


def planned_bytes(op: CurvatureOperator) -> str:
    """``≈2.1 GiB of memory (8 GiB budget)``: the products' peak and the algorithm's vectors."""
    if op.memory is None:
        return "memory not planned"
    held = op.memory.estimate + op.memory.reserve
    return f"≈{format_size(held)} of memory ({format_size(op.memory.budget)} budget)"


def _engine(op: CurvatureOperator) -> Engine:
    if op.route is None:
        return Engine("none", "no parameter-space product was needed (layer-output routes)")
    return Engine(op.route.route, op.route.reason, op.route.error, op.route.attention)


def _cost(op: CurvatureOperator, start: float, output_space: int = 0) -> Cost:
    return Cost(
        seconds=time.perf_counter() - start,
        hvps=op.counters.products,
        data_passes=op.counters.data_passes,
        check_hvps=op.counters.check_products,
        output_space_products=output_space,
    )


#: Probes per data pass of the trace and diagonal estimates (fewer when memory is short).
PROBE_BATCH = 8


@dataclass(frozen=True)
class ProbingSizes:
    """Sketch columns and probes per pass that fit the memory plan (see :func:`probing_sizes`)."""

    sketch: int
    batch: int


def probing_sizes(
    op: CurvatureOperator, *, sketch: int, batch: int = PROBE_BATCH, float64_vectors: int = 0
) -> ProbingSizes:
    """The sketch and probe batch of a Hutch++/Diag++ run, cut to what the budget leaves.

    The run keeps the sketch three times at its peak (C·S, its QR factor and QR's workspace,
    then Q and C·Q), a batch of probes four times (probes, deflated, products, samples), and
    ``float64_vectors`` parameter-length float64 accumulators; all of it is reserved in the
    operator's plan, so the graph cache only gets the rest.

    Raises:
        MemoryLimitError: when not even one probe fits.
    """
    vector = op.size * op.dtype.itemsize
    room = (op.spare_bytes() - float64_vectors * op.size * 8) // vector
    batch = max(1, min(batch, room // 8))
    sketch = max(0, min(sketch, (room - 4 * batch) // 3))
    needed = (3 * sketch + 4 * batch) * vector + float64_vectors * op.size * 8
    if room < 4:
        assert op.memory is not None
        raise MemoryLimitError(
            f"the probes need {format_size(needed)} beside the products' "
            f"{format_size(op.memory.estimate)}, more than the {format_size(op.memory.budget)} "
            f"budget ({op.memory.source})",
            "raise --max-memory, or select fewer layers (--layer)",
        )
    op.reserve(needed)
    return ProbingSizes(sketch, batch)


@dataclass(frozen=True)
class BasisPlan:
    """How a Lanczos run fits the memory plan: its basis bound and whether it keeps products."""

    max_basis: int | None
    keep_products: bool


def basis_plan(op: CurvatureOperator, *, steps: int, wanted: int, runs: int = 1) -> BasisPlan:
    """The largest Lanczos basis that ``runs`` runs alive together can hold in the budget.

    A run that needs more than fits thick-restarts inside ``max_basis`` vectors (same answers,
    more products); products are kept for free residuals only while they fit too. The bytes
    are reserved in the operator's plan.

    Raises:
        MemoryLimitError: when not even the wanted Ritz vectors and two more fit.
    """
    dtype = op.dtype

    def held(vectors: int, keep: bool) -> int:
        # Ritz vectors are formed only to recompute residuals from kept products.
        ritz = wanted if keep else 0
        return runs * lanczos_bytes(op.size, 1, vectors, dtype, keep, ritz_vectors=ritz)

    spare = op.spare_bytes()
    full = steps + 1
    keep = held(full, True) <= min(spare, runs * KEEP_PRODUCTS_BYTES)
    if keep or held(full, False) <= spare:
        op.reserve(held(full, keep))
        return BasisPlan(None, keep)
    vectors = full
    while vectors > wanted + 2 and held(vectors, False) > spare:
        vectors = max(wanted + 2, vectors * 3 // 4)
    if held(vectors, False) > spare:
        assert op.memory is not None
        raise MemoryLimitError(
            f"Lanczos needs {format_size(held(vectors, False))} for {vectors} vectors beside the "
            f"products' {format_size(op.memory.estimate)}, more than the "
            f"{format_size(op.memory.budget)} budget ({op.memory.source})",
            "raise --max-memory, ask for fewer eigenvalues, or select fewer layers (--layer)",
        )
    op.reserve(held(vectors, False))
    log.info("Lanczos keeps %d vectors (thick restarts beyond them) to fit the budget", vectors)
    return BasisPlan(vectors, False)


def _generator(seed: object) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) if seed is not None else 0)


def _positive(value: float | None, option: str) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{option} must be positive, got {value}", f"pass a positive {option}")


# -- spectrum -------------------------------------------------------------------------------
def _eigenvalues(pairs: tuple[Eigenpair, ...]) -> list[Eigenvalue]:
    return [Eigenvalue(p.value, p.residual, p.error, p.converged) for p in pairs]


def _spectrum(extremes: Extremes, parameters: int) -> Spectrum:
    return Spectrum(
        top=_eigenvalues(extremes.top),
        bottom=_eigenvalues(extremes.bottom),
        steps=extremes.steps,
        exact=extremes.exhausted,
        parameters=parameters,
    )


def run_spectrum(
    request: Request,
    *,
    layer_patterns: list[str],
    top_k: int = 5,
    bottom_k: int = 1,
    per_layer: bool = False,
    tol: float | None = None,
    max_steps: int | None = None,
    progress: Progress = _quiet,
) -> Report:
    """Top-k and most negative eigenvalues of the selected layers' curvature (and per layer)."""
    if top_k < 0 or bottom_k < 0 or top_k + bottom_k == 0:
        raise ConfigError(
            f"--top-k {top_k} --bottom-k {bottom_k} asks for no eigenvalue",
            "ask for at least one (--top-k ≥ 1 or --bottom-k ≥ 1)",
        )
    _positive(tol, "--tol")
    _positive(max_steps, "--max-steps")
    start = time.perf_counter()
    prepared = prepare(request, layer_patterns=layer_patterns)
    op = operator_for(prepared)
    tol = tol or TOLERANCE.get(op.dtype, 1e-4)
    limit = min(op.size, max_steps or MAX_STEPS)
    basis = basis_plan(op, steps=limit, wanted=top_k + bottom_k)
    seed = prepared.settings["seed"].value
    common = {
        "top_k": top_k,
        "bottom_k": bottom_k,
        "tol": tol,
        "dtype": op.dtype,
        "device": op.device,
        "keep_products": basis.keep_products,
        "max_basis": basis.max_basis,
    }
    (whole,) = extreme_eigenvalues(
        op.matmat,
        op.size,
        max_steps=limit,
        generator=_generator(seed),
        on_step=planned(op, progress, "Lanczos (all selected layers)", limit, 1),
        hint=op.free_gradient(),  # starts near the top eigenvectors of a trained network
        **common,
    )
    layers: dict[str, Spectrum] = {}
    if per_layer:
        blocks = list(op.blocks)
        steps = min(max(b.size for b in blocks), max_steps or MAX_STEPS)
        parts = extreme_eigenvalues(
            op.block_matmat,
            op.size,
            max_steps=steps,
            blocks=[(b.start, b.stop) for b in blocks],
            generator=_generator(seed),
            on_step=planned(op, progress, "Lanczos (every layer at once)", steps, len(blocks)),
            **common,
        )
        layers = {b.name: _spectrum(part, b.size) for b, part in zip(blocks, parts, strict=True)}
    results = SpectrumResults(
        top=_eigenvalues(whole.top),
        bottom=_eigenvalues(whole.bottom),
        steps=whole.steps,
        exact=whole.exhausted,
        tolerance=tol,
        layers=layers,
        engine=_engine(op),
    )
    options = {
        "top_k": top_k,
        "bottom_k": bottom_k,
        "per_layer": per_layer,
        "tol": tol,
        "max_steps": limit,
    }
    return report_for("spectrum", prepared, results, _cost(op, start), options)


# -- trace ----------------------------------------------------------------------------------
def _trace(estimate: TraceEstimate, parameters: int) -> Trace:
    return Trace(estimate.value, estimate.stderr, estimate.exact, estimate.interval, parameters)


def _flat(op: CurvatureOperator, values: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([values[b.name] for b in op.blocks])


def run_trace(
    request: Request,
    *,
    layer_patterns: list[str],
    products: int | None = None,
    target: float | None = 0.01,
    method: str = "auto",
    sketch: int | None = None,
    progress: Progress = _quiet,
) -> Report:
    """Tr(C) and every selected layer's Tr(C_ll), exact or from one set of probes."""
    if method not in TRACE_METHODS:
        raise ConfigError(f"unknown trace method {method!r}", f"use {', '.join(TRACE_METHODS)}")
    _positive(products, "--products")
    _positive(target, "--target-error")
    start = time.perf_counter()
    prepared = prepare(request, layer_patterns=layer_patterns)
    op = operator_for(prepared, columns=PROBE_BATCH)
    blocks = list(op.blocks)
    output_space = 0
    # auto: exact when that is cheap — few parameters, or every layer has a fast exact diagonal
    exact = method == "exact" or (
        method == "auto"
        and (
            op.size <= (products or EXACT_TRACE_PARAMETERS)
            or all(has_fast_route(op, b) for b in blocks)
        )
    )
    if exact:
        diagonal = exact_diagonal(
            op,
            seed=int(prepared.settings["seed"].value or 0),
            progress=lambda done, total: progress("exact diagonal, layer by layer", done, total),
        )
        output_space = diagonal.output_products
        traces = traces_from_diagonal(
            _flat(op, diagonal.values),
            blocks=[(b.start, b.stop) for b in blocks],
            products=diagonal.products,
        )
    else:
        budget = products or DEFAULT_TRACE_PRODUCTS
        if sketch is None and method != "hutchinson":
            sketch = min(16, max(0, (budget - 8) // 3))
        sizes = probing_sizes(op, sketch=0 if method == "hutchinson" else sketch or 0)
        traces = _estimate_trace(
            op.matmat,
            op.size,
            products=budget,
            target=target,
            sketch=sizes.sketch,
            batch=sizes.batch,
            blocks=[(b.start, b.stop) for b in blocks],
            generator=_generator(prepared.settings["seed"].value),
            dtype=op.dtype,
            device=op.device,
            on_step=lambda done, total: progress("Hutch++ probes", done, total),
        )
    results = TraceResults(
        trace=_trace(traces.total, op.size),
        layers={b.name: _trace(t, b.size) for b, t in zip(blocks, traces.blocks, strict=True)},
        method=traces.method,
        stopped=traces.stopped,
        probes=traces.probes,
        sketch=traces.sketch,
        target=None if exact else target,
        budget=None if exact else products or DEFAULT_TRACE_PRODUCTS,
        engine=_engine(op),
    )
    options = {"products": products, "target_error": target, "method": method}
    return report_for("trace", prepared, results, _cost(op, start, output_space), options)


# -- diag -----------------------------------------------------------------------------------
def _estimate_trace(*args: object, **kwargs: object) -> TraceEstimate:
    """:func:`estimate_trace`, its refusals of a budget turned into usage errors."""
    try:
        return estimate_trace(*args, **kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc), "raise --products (or pass --target)") from exc


def _locate(op: CurvatureOperator, block: Block, flat: int) -> tuple[str, list[int]]:
    row = block.start + flat
    for slot in op.layout.slots:
        if slot.start <= row < slot.stop:
            index = np.unravel_index(row - slot.start, slot.shape) if slot.shape else ()
            return slot.name, [int(i) for i in index]
    raise AssertionError(f"row {row} outside the layout")  # pragma: no cover


def _summary(
    op: CurvatureOperator,
    block: Block,
    values: torch.Tensor,
    stderr: torch.Tensor,
    *,
    exact: bool,
    method: str,
    largest: int,
) -> DiagonalSummary:
    stats = diagonal_stats(values, stderr, largest=largest)
    entries = [DiagonalEntry(*_locate(op, block, index), value) for index, value in stats.largest]
    fields = {k: v for k, v in asdict(stats).items() if k != "largest"}
    return DiagonalSummary(**fields, exact=exact, method=method, largest=entries)


@dataclass(frozen=True)
class LayerDiagonalsFound:
    """Every selected layer's diagonal summary and trace, as ``diag`` and ``report`` give them.

    Attributes:
        summaries: Diagonal statistics per layer.
        traces: Tr(C_ll) per layer: the exact diagonal's sum, or Hutch++ from the Diag++ probes.
        total: Tr(C) over the selected layers (exact part plus the estimated layers' estimate).
        output_space: Layer-output-space products spent by the fast exact routes.
    """

    summaries: dict[str, DiagonalSummary]
    traces: dict[str, Trace]
    total: Trace
    output_space: int


def layer_diagonals(
    op: CurvatureOperator,
    *,
    mode: str,
    products: int,
    largest: int,
    seed: int,
    progress: Progress = _quiet,
) -> LayerDiagonalsFound:
    """Diagonals of every layer (exact where ``mode`` allows), and the traces they give.

    Estimated layers share one Diag++ run over the whole operator; their traces are the
    Hutch++ traces of the same probes.
    """
    summaries: dict[str, DiagonalSummary] = {}
    traces: dict[str, Trace] = {}
    output_space = 0
    estimated = list(op.blocks)
    exact_sum = 0.0
    if mode != "estimate":
        diagonal = exact_diagonal(
            op,
            seed=seed,
            unit_columns_limit=unit_column_budget(op) if mode == "auto" else None,
            output_space_limit=unit_column_budget(op) if mode == "auto" else None,
            progress=lambda done, total: progress("exact diagonal, layer by layer", done, total),
        )
        output_space = diagonal.output_products
        for block in op.blocks:
            if block.name in diagonal.values:
                values = diagonal.values[block.name]
                summaries[block.name] = _summary(
                    op,
                    block,
                    values,
                    torch.zeros_like(values),
                    exact=True,
                    method=diagonal.methods[block.name],
                    largest=largest,
                )
                value = float(values.double().sum())
                traces[block.name] = Trace(value, 0.0, True, 0.0, block.size)
                exact_sum += value
        estimated = [b for b in op.blocks if b.name not in diagonal.values]
    total = Trace(exact_sum, 0.0, True, 0.0, op.size)
    if estimated:
        sizes = probing_sizes(op, sketch=products // 3, float64_vectors=3)
        guess = estimate_diagonal(
            op.matmat,
            op.size,
            products=products,
            sketch=sizes.sketch,
            batch=sizes.batch,
            blocks=[(b.start, b.stop) for b in op.blocks],
            generator=_generator(seed),
            dtype=op.dtype,
            device=op.device,
            on_step=lambda done, total: progress("Diag++ probes", done, total),
        )
        how = f"Diag++ estimate ({guess.sketch} sketch columns, {guess.probes} probes)"
        index = [op.blocks.index(b) for b in estimated]
        assert guess.block_base is not None
        assert guess.block_samples is not None
        found = traces_from_probes(
            guess.block_base[index],
            guess.block_samples[index],
            stopped="budget",
            products=guess.products,
            sketch=guess.sketch,
        )
        for block, trace in zip(estimated, found.blocks, strict=True):
            rows = slice(block.start, block.stop)
            summaries[block.name] = _summary(
                op,
                block,
                guess.values[rows],
                guess.stderr[rows],
                exact=False,
                method=how,
                largest=largest,
            )
            traces[block.name] = _trace(trace, block.size)
        part = found.total
        total = Trace(exact_sum + part.value, part.stderr, False, part.interval, op.size)
    names = [b.name for b in op.blocks]
    return LayerDiagonalsFound(
        {n: summaries[n] for n in names}, {n: traces[n] for n in names}, total, output_space
    )


def run_diag(
    request: Request,
    *,
    layer_patterns: list[str],
    mode: str = "auto",
    products: int | None = None,
    largest: int = 5,
    progress: Progress = _quiet,
) -> Report:
    """Statistics of diag(C_ll) for every selected layer, exact where affordable.

    ``auto``: exact by the layer's fast route when one applies, else by unit columns while all
    layers together need at most :data:`UNIT_COLUMNS_LIMIT`; the other layers are estimated
    (Diag++, ``products`` products shared by every estimated layer). ``exact``: always exact.
    ``estimate``: always estimated.
    """
    if mode not in DIAG_MODES:
        raise ConfigError(f"unknown diagonal mode {mode!r}", f"use {', '.join(DIAG_MODES)}")
    if largest < 0:
        raise ConfigError(f"--largest must be ≥ 0, got {largest}", "pass 0 or more")
    _positive(products, "--products")
    start = time.perf_counter()
    prepared = prepare(request, layer_patterns=layer_patterns)
    op = operator_for(prepared, columns=PROBE_BATCH)
    products = diag_products_for(op.size, products, estimated=mode != "exact")
    seed = int(prepared.settings["seed"].value or 0)
    found = layer_diagonals(
        op, mode=mode, products=products, largest=largest, seed=seed, progress=progress
    )
    summaries, output_space = found.summaries, found.output_space
    results = DiagonalResults(
        layers={b.name: summaries[b.name] for b in op.blocks}, engine=_engine(op)
    )
    options = {"mode": mode, "products": products, "largest": largest}
    return report_for("diag", prepared, results, _cost(op, start, output_space), options)
