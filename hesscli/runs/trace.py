"""``hesscli trace``: Tr(C) and every selected layer's Tr(C_ll).

Exact when that is cheap (few parameters, or every layer has a fast exact diagonal), else
Hutch++ from one set of probes shared by all layers, within a product budget and a target error.
"""

from __future__ import annotations

import time

import torch

from hesscli.algorithms.trace import TraceEstimate, estimate_trace, traces_from_diagonal
from hesscli.engine.diagonal import exact_diagonal, has_fast_route
from hesscli.engine.operator import CurvatureOperator
from hesscli.errors import ConfigError
from hesscli.results import Report, TraceResults
from hesscli.runs.envelope import report_for
from hesscli.runs.outcomes import cost_of, engine_of, trace_of
from hesscli.runs.plans import PROBE_BATCH, probing_sizes, require_positive, seeded_generator
from hesscli.runs.prepare import Request, operator_for, prepare
from hesscli.runs.progress import Progress, quiet

TRACE_METHODS = ("auto", "exact", "hutch++", "hutchinson")
#: ``trace``: without a budget, exact below this many parameters.
EXACT_TRACE_PARAMETERS = 64
#: ``trace``: products at most when the user gives no budget (the target may stop it sooner).
#: About 200 gradients' worth: minutes on a 22M-parameter transformer on a 2-core CPU, with a
#: standard error reported; ``--products`` buys more.
DEFAULT_TRACE_PRODUCTS = 100


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
    progress: Progress = quiet,
) -> Report:
    """Tr(C) and every selected layer's Tr(C_ll), exact or from one set of probes."""
    if method not in TRACE_METHODS:
        raise ConfigError(f"unknown trace method {method!r}", f"use {', '.join(TRACE_METHODS)}")
    require_positive(products, "--products")
    require_positive(target, "--target-error")
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
            generator=seeded_generator(prepared.settings["seed"].value),
            dtype=op.dtype,
            device=op.device,
            on_step=lambda done, total: progress("Hutch++ probes", done, total),
        )
    results = TraceResults(
        trace=trace_of(traces.total, op.size),
        layers={b.name: trace_of(t, b.size) for b, t in zip(blocks, traces.blocks, strict=True)},
        method=traces.method,
        stopped=traces.stopped,
        probes=traces.probes,
        sketch=traces.sketch,
        target=None if exact else target,
        budget=None if exact else products or DEFAULT_TRACE_PRODUCTS,
        engine=engine_of(op),
    )
    options = {"products": products, "target_error": target, "method": method}
    return report_for("trace", prepared, results, cost_of(op, start, output_space), options)


def _estimate_trace(*args: object, **kwargs: object) -> TraceEstimate:
    """:func:`estimate_trace`, its refusals of a budget turned into usage errors."""
    try:
        return estimate_trace(*args, **kwargs)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc), "raise --products (or pass --target)") from exc
