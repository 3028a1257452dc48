"""``hesscli diag``: statistics of every selected layer's Hessian diagonal.

Exact where affordable (a layer's fast route, else unit columns within a budget), Diag++
otherwise; :func:`layer_diagonals` is also ``report``'s diagonal phase, which takes the layers'
traces from the same diagonals or probes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from hesscli.algorithms.diagonal import MIN_PROBES, diagonal_stats, estimate_diagonal
from hesscli.algorithms.trace import traces_from_probes
from hesscli.engine.diagonal import exact_diagonal
from hesscli.engine.layout import Block
from hesscli.engine.operator import CurvatureOperator
from hesscli.errors import ConfigError
from hesscli.results import DiagonalEntry, DiagonalResults, DiagonalSummary, Report, Trace
from hesscli.runs.envelope import report_for
from hesscli.runs.outcomes import cost_of, engine_of, trace_of
from hesscli.runs.plans import (
    LARGE_MODEL,
    PROBE_BATCH,
    probing_sizes,
    require_positive,
    seeded_generator,
)
from hesscli.runs.prepare import Request, operator_for, prepare
from hesscli.runs.progress import Progress, quiet

#: ``diag`` in auto mode: unit columns all layers together may spend (and output-space products
#: one layer may spend per micro-batch) before the remaining layers are estimated instead, on a
#: model below :data:`LARGE_MODEL` parameters. On a larger one a product costs seconds, so
#: layers without a fast exact route are estimated (``--exact`` still forces it).
UNIT_COLUMNS_LIMIT = 4096
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


DIAG_MODES = ("auto", "exact", "estimate")


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
    progress: Progress = quiet,
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
            generator=seeded_generator(seed),
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
            traces[block.name] = trace_of(trace, block.size)
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
    progress: Progress = quiet,
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
    require_positive(products, "--products")
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
        layers={b.name: summaries[b.name] for b in op.blocks}, engine=engine_of(op)
    )
    options = {"mode": mode, "products": products, "largest": largest}
    return report_for("diag", prepared, results, cost_of(op, start, output_space), options)
