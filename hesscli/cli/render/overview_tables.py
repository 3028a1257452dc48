"""``density``, ``report``, ``check`` and ``compare`` as Rich tables, and the density sparkline.

Only formatting happens here: every number comes from the result objects. Resampling the
density onto the terminal's columns picks the largest grid value of each column (so that a
narrow outlier peak is not skipped), and its logarithm chooses the block height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePath

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.text import Text

from hesscli.cli.render.common import WHOLE, footer, general, heading, sci, short
from hesscli.cli.render.fit import PLAIN_STYLE, Column, FitTable
from hesscli.results import (
    CheckResults,
    CompareResults,
    Density,
    DensityResults,
    Eigenvalue,
    Flag,
    LayerSummary,
    Mass,
    Plan,
    Report,
    ReportResults,
    Summary,
    Trace,
)

#: Block characters of the sparkline, lowest first.
BLOCKS = "▁▂▃▄▅▆▇█"
#: Decades of the density below its peak that the sparkline shows (lower values are blank).
DECADES = 6
#: Columns of the model's sparkline, and of the per-layer ones inside the density table.
WIDTH, LAYER_WIDTH = 60, 24
NOT_CONVERGED = "*"
#: Display names of check quantities and relations (the JSON keeps the plain names).
QUANTITIES = {"lambda_max": "λmax", "lambda_min": "λmin", "top": "λmax", "bottom": "λmin"}
#: ``within``: a baseline row, whose limit is the baseline's value.
RELATIONS = {"<=": "≤", ">=": "≥", "within": "≈"}
#: What the check table's columns mean (the rules themselves live in hesscli.runs.check).
CHECK_LEGEND = (
    "margin: how far inside the limit (negative: past it); allowance: what the measurement "
    "cannot resolve (1.96 stderr of a trace, an eigenvalue's residual) or, in a baseline row "
    "(≈ the baseline's value), the change allowed (--tolerance plus both runs' noise); an "
    "unconverged eigenvalue fails"
)
SCALE = f"sparkline: log scale over {DECADES} decades below the peak; red columns: λ < 0"


# -- small formatters --------------------------------------------------------------------------
def _pm(value: float, stderr: float, exact: bool = False) -> str:
    """``value ± stderr``, or the value alone when it is exact (``± n/a``: no spread known)."""
    if exact:
        return general(value)
    spread = f"{stderr:.2g}" if math.isfinite(stderr) else "n/a"
    return f"{general(value)} ± {spread}"


def _signed(value: float) -> str:
    return f"{value:+.3g}" if math.isfinite(value) else general(value)


def _trace(trace: Trace) -> str:
    return _pm(trace.value, trace.stderr, trace.exact) + (" (exact)" if trace.exact else "")


def _percent(fraction: float, digits: int = 3) -> str:
    """A fraction as a percentage with ``digits`` significant digits (``0.0517`` → ``5.17%``)."""
    return f"{fraction * 100:.{digits}g}%" if math.isfinite(fraction) else "n/a"


def _mass(mass: Mass) -> str:
    return f"{_percent(mass.value)} ± {_percent(mass.stderr, 2)}"


def _bounds(mass: Mass) -> str:
    """The threshold a mass counts from, and the quadrature's bounds on it."""
    return f"λ < −{sci(mass.threshold)}; bounds {_percent(mass.low)} … {_percent(mass.high)}"


def _eig(pair: Eigenvalue) -> str:
    """An eigenvalue, starred when it did not meet its tolerance."""
    return general(pair.value) + ("" if pair.converged else NOT_CONVERGED)


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


def short_names(paths: Sequence[str]) -> list[str]:
    """The fewest trailing path parts that tell the checkpoints apart (file names if unique)."""
    parts = [PurePath(p).parts or (p,) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _flag_names(flags: Sequence[Flag]) -> str:
    """Flag names grouped by subject: ``saddle, sharp; fc1: dominant``."""
    groups: dict[str, list[str]] = {}
    for flag in flags:
        groups.setdefault(flag.subject, []).append(flag.name)
    parts = [
        ", ".join(names) if subject == "model" else f"{subject}: {', '.join(names)}"
        for subject, names in groups.items()
    ]
    return "; ".join(parts) or "-"


def _flag_lines(flags: Sequence[Flag]) -> Text:
    """Every flag (the model's and the layers'), one per line with its subject and reason."""
    text = Text("flags:" if flags else "flags: none")
    for flag in flags:
        text.append("\n  ")
        text.append(flag.name, style="bold yellow")
        text.append(f" [{flag.subject}]: {flag.message}")
    return text


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


def _ritz_row(label: str, pairs: list[Eigenvalue]) -> list[str]:
    if not pairs:
        return [label, "-", ""]
    first = pairs[0]
    notes = f"residual {sci(first.residual)}" + ("" if first.converged else ", not converged")
    if pairs[1:]:
        notes += f"; next: {', '.join(_eig(p) for p in pairs[1:])}"
    return [label, _eig(first), notes]


def _not_converged(pairs: Sequence[Eigenvalue]) -> str:
    """The legend of :data:`NOT_CONVERGED`, when some value of ``pairs`` carries it."""
    if all(p.converged for p in pairs):
        return ""
    return f"{NOT_CONVERGED} not converged (residual in --json); "


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
        ["negative mass", _mass(mass), _bounds(mass)],
        ["significant negative mass", _mass(significant), _bounds(significant)],
        ["trace (probes)", _trace(results.trace), f"Hutchinson, {results.probes} probes"],
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
                _mass(layer.negative_mass),
                short(layer.sigma),
                f"{short(layer.grid[0])} … {short(layer.grid[-1])}" if layer.grid else "-",
                sparkline(layer.grid, layer.density, LAYER_WIDTH),
            ]
            for name, layer in results.layers.items()
        ]
        title = "Per layer (each block's own density)"
        parts.append(FitTable(DENSITY_LAYER_COLUMNS, rows, title=title))
    note = (
        f"{_not_converged([*results.top, *results.bottom])}{SCALE}\nRitz values: extreme nodes "
        "of the first probe, residuals ‖Cy − λy‖ bounded from the recurrence; grid, density and "
        "nodes in --json"
    )
    parts.append(footer(report, results.engine, note))
    return Group(*parts)


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
        _eig(summary.top),
        _eig(summary.bottom),
        f"{summary.ratio:.3g}",
        _trace(summary.trace),
        _pm(summary.trace_per_parameter, summary.trace_per_parameter_stderr, summary.trace.exact),
        _mass(summary.negative_mass),
        _mass(summary.significant_negative_mass),
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
        _trace(layer.trace),
        _eig(layer.top),
        _eig(layer.bottom),
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
    marked = _not_converged(_summary_pairs(results.summary, results.layers))
    note = f"{marked}{_LEGEND}\n{SCALE}\nplanned: {_plan(results.plan)}"
    return Group(
        heading(report, "Curvature report"),
        _layer_table(results.layers),
        _summary_table(results.summary),
        density_block(results.density, "eigenvalue density"),
        Text(""),
        _flag_lines(results.flags),
        footer(report, results.engine, note),
    )


# -- check -------------------------------------------------------------------------------------
CHECK_COLUMNS = [
    Column("check", justify="left"),
    Column("quantity", "name", "left"),
    Column("limit"),
    Column("measured"),
    Column("allowance", drop=1),
    Column("margin"),
    Column("result"),
]


def check_renderable(report: Report) -> RenderableType:
    """One row per threshold with its margin and PASS/FAIL, then the verdict and baseline."""
    results = report.results
    assert isinstance(results, CheckResults)
    rows: list[list[str | Text]] = [
        [
            item.name,
            QUANTITIES.get(item.quantity, item.quantity)
            + (f" [{item.layer}]" if item.layer else ""),
            f"{RELATIONS.get(item.relation, item.relation)} {general(item.limit)}",
            _pm(item.measured, item.stderr, exact=not item.stderr),
            short(item.allowance) if item.allowance else "-",
            _signed(item.margin),
            Text("PASS", style="green") if item.passed else Text("FAIL", style="bold red"),
        ]
        for item in results.checks
    ]
    failed = [item for item in results.checks if not item.passed]
    verdict = (
        Text(f"passed: all {len(results.checks)} checks", style="bold green")
        if results.passed
        else Text(f"FAILED: {len(failed)} of {len(results.checks)} checks", style="bold red")
    )
    if results.baseline is None:
        baseline = Text("baseline: none")
    else:
        tolerance = (
            "" if results.tolerance is None else f" (tolerance {_percent(results.tolerance)})"
        )
        baseline = Text(f"baseline: {results.baseline}{tolerance}")
    return Group(
        heading(report, "Check"),
        FitTable(CHECK_COLUMNS, rows, stack_single_row=False),
        verdict,
        baseline,
        _flag_lines(results.flags),
        footer(report, results.engine, CHECK_LEGEND),
    )


# -- compare -----------------------------------------------------------------------------------
COMPARE_COLUMNS = [
    Column("checkpoint", "name", "left"),
    Column("λmax"),
    Column("λmin"),
    Column("λmin/λmax", drop=2),
    Column("trace"),
    Column("sig. neg. mass", drop=3),
    Column("trace/param", drop=1),
    Column("flags", "text", "left"),
]


def compare_renderable(report: Report) -> RenderableType:
    """One row per checkpoint, in the order given: the report's summary and flags."""
    results = report.results
    assert isinstance(results, CompareResults)
    names = short_names([c.checkpoint for c in results.checkpoints])
    rows: list[list[str | Text]] = []
    for name, checkpoint in zip(names, results.checkpoints, strict=True):
        s = checkpoint.summary
        rows.append(
            [
                name,
                _eig(s.top),
                _eig(s.bottom),
                f"{s.ratio:.3g}",
                _pm(s.trace.value, s.trace.stderr, s.trace.exact),
                _mass(s.significant_negative_mass),
                short(s.trace_per_parameter),
                _flag_names(checkpoint.flags),
            ]
        )
    pairs = [p for c in results.checkpoints for p in (c.summary.top, c.summary.bottom)]
    note = (
        f"{_not_converged(pairs)}trace ± stderr (no ±: exact); sig. neg. mass = fraction of "
        "eigenvalues below −1% of λmax; trace/param = trace per parameter; flags: the model's, "
        "then each layer's; every checkpoint's per-layer rows are in --json"
    )
    return Group(
        heading(report, "Comparison"),
        FitTable(COMPARE_COLUMNS, rows, separator="/", stack_single_row=False),
        footer(report, results.engine, note),
    )
