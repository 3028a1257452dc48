"""``report`` as Rich tables: one row per layer, the model summary, density, flags; and its plan.

Only formatting happens here: every number comes from the result objects. The plan line is the
cost a run announces before it starts (``report``, ``check`` and ``compare`` print it on
stderr), worded as the report's footer repeats it.
"""

from __future__ import annotations

import math

from rich.console import Group, RenderableType
from rich.text import Text

from hesscli.cli.render.cells import (
    eigenvalue_cell,
    flag_lines,
    mass_cell,
    not_converged_note,
    plus_minus,
    trace_cell,
)
from hesscli.cli.render.common import footer, heading, short
from hesscli.cli.render.density_tables import SCALE, density_block
from hesscli.cli.render.fit import Column, FitTable
from hesscli.results import Eigenvalue, LayerSummary, Plan, Report, ReportResults, Summary


# -- the plan ----------------------------------------------------------------------------------
def _seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def plan_line(plan: Plan) -> str:
    """The one line announcing a run's cost before it starts (printed on stderr)."""
    return f"plan: {_plan(plan)}"


def _plan(plan: Plan) -> str:
    """Passes and products, and the time when it could be estimated (NaN: not timed)."""
    text = f"{plan.data_passes:,} data passes, {plan.products:,} products"
    if math.isfinite(plan.seconds) and math.isfinite(plan.pass_seconds):
        text += f", about {_seconds(plan.seconds)} ({_seconds(plan.pass_seconds)} per pass)"
    if plan.bytes:
        text += f", ≈{plan.bytes / 2**30:.3g} GiB of memory"
    return text


# -- report ------------------------------------------------------------------------------------
SUMMARY_COLUMNS = [
    Column("λmax"),
    Column("λmin"),
    Column("λmin/λmax"),
    Column("trace ± stderr"),
    Column("trace/param"),
    Column("negative mass"),
    Column("significant neg."),
]


def _summary_cells(summary: Summary) -> list[str | Text]:
    """The model-level numbers of one summary, in the order of :data:`SUMMARY_COLUMNS`."""
    return [
        eigenvalue_cell(summary.top),
        eigenvalue_cell(summary.bottom),
        f"{summary.ratio:.3g}",
        trace_cell(summary.trace),
        plus_minus(
            summary.trace_per_parameter, summary.trace_per_parameter_stderr, summary.trace.exact
        ),
        mass_cell(summary.negative_mass),
        mass_cell(summary.significant_negative_mass),
    ]


LAYER_COLUMNS = [
    Column("layer", "name", "left"),
    Column("params", drop=4),
    Column("trace ± stderr"),
    Column("λmax"),
    Column("λmin"),
    Column("diag min", drop=2),
    Column("diag max", drop=3),
    Column("diag neg", drop=1),
    Column("flags", "text", "left"),
]


def _layer_cells(name: str, layer: LayerSummary) -> list[str | Text]:
    d = layer.diagonal
    return [
        name,
        f"{layer.parameters:,}",
        trace_cell(layer.trace),
        eigenvalue_cell(layer.top),
        eigenvalue_cell(layer.bottom),
        short(d.min),
        short(d.max),
        f"{d.fraction_negative:.0%}",
        ", ".join(layer.flags) or "-",
    ]


def _layer_table(layers: dict[str, LayerSummary]) -> FitTable:
    return FitTable(LAYER_COLUMNS, [_layer_cells(name, layer) for name, layer in layers.items()])


def _summary_table(summary: Summary) -> FitTable:
    title = f"Model: all selected layers, {summary.trace.parameters:,} parameters"
    return FitTable(SUMMARY_COLUMNS, [_summary_cells(summary)], title=title)


_LEGEND = (
    "λmax/λmin of a layer are those of its own block; diag neg = fraction of negative diagonal "
    "entries; negative mass = fraction of eigenvalues below −threshold (round-off); "
    "significant neg. = below a threshold relative to λmax (the saddle flag's measure); "
    "thresholds and quadrature bounds in --json"
)


def _summary_pairs(summary: Summary, layers: dict[str, LayerSummary]) -> list[Eigenvalue]:
    """Every eigenvalue a report or check table shows (for the not-converged legend)."""
    pairs = [summary.top, summary.bottom]
    for layer in layers.values():
        pairs += [layer.top, layer.bottom]
    return pairs


def report_renderable(report: Report) -> RenderableType:
    """One row per layer, the model summary, the density sparkline, flags and cost."""
    results = report.results
    assert isinstance(results, ReportResults)
    marked = not_converged_note(_summary_pairs(results.summary, results.layers))
    note = f"{marked}{_LEGEND}\n{SCALE}\nplanned: {_plan(results.plan)}"
    return Group(
        heading(report, "Curvature report"),
        _layer_table(results.layers),
        _summary_table(results.summary),
        density_block(results.density, "eigenvalue density"),
        Text(""),
        flag_lines(results.flags),
        footer(report, results.engine, note),
    )
