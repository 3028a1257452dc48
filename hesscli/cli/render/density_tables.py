"""``density`` as Rich tables, and the density sparkline that ``report`` shows too.

Only formatting happens here: every number comes from the result objects. Resampling the
density onto the terminal's columns picks the largest grid value of each column (so that a
narrow outlier peak is not skipped), and its logarithm chooses the block height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.text import Text

from hesscli.cli.render.cells import (
    eigenvalue_cell,
    mass_cell,
    not_converged_note,
    percent,
    trace_cell,
)
from hesscli.cli.render.common import WHOLE, footer, heading, sci, short
from hesscli.cli.render.fit import PLAIN_STYLE, Column, FitTable
from hesscli.results import Density, DensityResults, Eigenvalue, Mass, Report

#: Block characters of the sparkline, lowest first.
BLOCKS = "▁▂▃▄▅▆▇█"
#: Decades of the density below its peak that the sparkline shows (lower values are blank).
DECADES = 6
#: Columns of the model's sparkline, and of the per-layer ones inside the density table.
WIDTH, LAYER_WIDTH = 60, 24
SCALE = f"sparkline: log scale over {DECADES} decades below the peak; red columns: λ < 0"


# -- the density sparkline ---------------------------------------------------------------------
def _columns(count: int, width: int) -> list[range]:
    """Split ``count`` grid points into at most ``width`` consecutive, non-empty columns."""
    width = max(1, min(width, count))
    return [range(c * count // width, (c + 1) * count // width) for c in range(width)]


def sparkline(grid: Sequence[float], density: Sequence[float], width: int = WIDTH) -> Text:
    """The density as one line of blocks on a log scale; columns at λ < 0 in red.

    Each column shows the largest density among its grid points, so an isolated outlier
    peak stays visible; values below ``10**-DECADES`` × the peak are blank.
    """
    if not density:
        return Text("(no density)", style="dim")
    peak = max(density)
    line = Text()
    for column in _columns(len(density), width):
        value = max(density[i] for i in column)
        if not peak > 0 or not value > peak * 10.0**-DECADES:
            char = " "
        else:
            height = (math.log10(value / peak) + DECADES) / DECADES
            char = BLOCKS[min(len(BLOCKS) - 1, int(height * len(BLOCKS)))]
        line.append(char, style="red" if grid[column[-1]] < 0 else "cyan")
    return line


def axis(grid: Sequence[float], width: int = WIDTH) -> Text:
    """The λ range under a sparkline: both ends, and ``0`` under the first column at λ ≥ 0."""
    if not grid:
        return Text("")
    columns = _columns(len(grid), width)
    chars = [" "] * len(columns)
    low, high = short(grid[0]), short(grid[-1])
    if len(low) + len(high) + 1 > len(chars):
        return Text(f"{low} … {high} λ", style="dim")
    zero = next((c for c, col in enumerate(columns) if grid[col[0]] >= 0), None)
    if zero is not None and len(low) < zero < len(chars) - len(high) - 1 and grid[0] < 0:
        chars[zero] = "0"
    chars[: len(low)] = low
    chars[len(chars) - len(high) :] = high
    return Text("".join(chars) + " λ", style="dim")


class _Curve:
    """The sparkline and its λ axis, :data:`WIDTH` columns or as many as the line has."""

    def __init__(self, density: Density | DensityResults) -> None:
        self.density = density

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Both lines, narrowed to leave room for the axis' `` λ``."""
        width = max(1, min(WIDTH, options.max_width - 2))
        yield sparkline(self.density.grid, self.density.density, width)
        yield axis(self.density.grid, width)


def density_block(density: Density | DensityResults, heading: str) -> Group:
    """A heading, the sparkline and its λ axis."""
    note = f"{heading}: {density.probes} probes × {density.steps} steps, σ = {short(density.sigma)}"
    return Group(Text(note, style="bold"), _Curve(density))


# -- density -----------------------------------------------------------------------------------
FACT_COLUMNS = [Column("", justify="left"), Column(""), Column("", "text", "left")]


def _bounds(mass: Mass) -> str:
    """The threshold a mass counts from, and the quadrature's bounds on it."""
    return f"λ < −{sci(mass.threshold)}; bounds {percent(mass.low)} … {percent(mass.high)}"


def _ritz_row(label: str, pairs: list[Eigenvalue]) -> list[str]:
    if not pairs:
        return [label, "-", ""]
    first = pairs[0]
    notes = f"residual {sci(first.residual)}" + ("" if first.converged else ", not converged")
    if pairs[1:]:
        notes += f"; next: {', '.join(eigenvalue_cell(p) for p in pairs[1:])}"
    return [label, eigenvalue_cell(first), notes]


DENSITY_LAYER_COLUMNS = [
    Column("layer", "name", "left"),
    Column("params", drop=2),
    Column("negative mass"),
    Column("σ", drop=1),
    Column("λ range", justify="left", drop=3),
    Column("density (log)", justify="left", drop=4),
]


def density_renderable(report: Report) -> RenderableType:
    """The sparkline, the extreme Ritz values, negative mass and trace; then each layer's."""
    results = report.results
    assert isinstance(results, DensityResults)
    mass, significant = results.negative_mass, results.significant_negative_mass
    facts = [
        _ritz_row("λmax (largest Ritz value)", results.top),
        _ritz_row("λmin (smallest Ritz value)", results.bottom),
        ["negative mass", mass_cell(mass), _bounds(mass)],
        ["significant negative mass", mass_cell(significant), _bounds(significant)],
        ["trace (probes)", trace_cell(results.trace), f"Hutchinson, {results.probes} probes"],
        [
            "quadrature",
            f"{results.probes} × {results.steps}",
            f"probes × steps; σ = {short(results.sigma)}, {len(results.grid)} points",
        ],
    ]
    parts: list[RenderableType] = [
        heading(report, "Eigenvalue density"),
        density_block(results, f"{WHOLE}, {results.parameters:,} parameters"),
        Text(""),
        FitTable(FACT_COLUMNS, facts, styles=[PLAIN_STYLE]),
    ]
    if results.layers:
        rows: list[list[str | Text]] = [
            [
                name,
                f"{layer.parameters:,}",
                mass_cell(layer.negative_mass),
                short(layer.sigma),
                f"{short(layer.grid[0])} … {short(layer.grid[-1])}" if layer.grid else "-",
                sparkline(layer.grid, layer.density, LAYER_WIDTH),
            ]
            for name, layer in results.layers.items()
        ]
        title = "Per layer (each block's own density)"
        parts.append(FitTable(DENSITY_LAYER_COLUMNS, rows, title=title))
    note = (
        f"{not_converged_note([*results.top, *results.bottom])}{SCALE}\nRitz values: extreme "
        "nodes of the first probe, residuals ‖Cy − λy‖ bounded from the recurrence; grid, "
        "density and nodes in --json"
    )
    parts.append(footer(report, results.engine, note))
    return Group(*parts)
