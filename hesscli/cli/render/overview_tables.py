"""``density``, ``report``, ``check`` and ``compare`` as Rich tables, and the density sparkline.

Only formatting happens here: every number comes from the result objects. Resampling the
density onto the terminal's columns picks the largest grid value of each column (so that a
narrow outlier peak is not skipped), and its logarithm chooses the block height.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePath

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hesscli.cli.render.curvature_tables import WHOLE, _e, _footer, _g, _short, _title
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
#: What the check table's columns mean (the rules themselves live in hesscli.gate).
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
        return _g(value)
    return f"{_g(value)} ± {stderr:.2g}" if math.isfinite(stderr) else f"{_g(value)} ± n/a"


def _signed(value: float) -> str:
    return f"{value:+.3g}" if math.isfinite(value) else _g(value)


def _trace(trace: Trace) -> str:
    return _pm(trace.value, trace.stderr, trace.exact) + (" (exact)" if trace.exact else "")


def _percent(fraction: float, digits: int = 3) -> str:
    """A fraction as a percentage with ``digits`` significant digits (``0.0517`` → ``5.17%``)."""
    return f"{fraction * 100:.{digits}g}%" if math.isfinite(fraction) else "n/a"


def _mass(mass: Mass) -> str:
    return f"{_percent(mass.value)} ± {_percent(mass.stderr, 2)}"


def _bounds(mass: Mass) -> str:
    """The threshold a mass counts from, and the quadrature's bounds on it."""
    return f"λ < −{_e(mass.threshold)}; bounds {_percent(mass.low)} … {_percent(mass.high)}"


def _eig(pair: Eigenvalue) -> str:
    """An eigenvalue, starred when it did not meet its tolerance."""
    return _g(pair.value) + ("" if pair.converged else NOT_CONVERGED)


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


def _heading(report: Report, what: str) -> Text:
    """The run's one-line title, outside the table so that it never wraps to the table's width."""
    return Text(_title(report, what), style="italic")


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
    low, high = _short(grid[0]), _short(grid[-1])
    if len(low) + len(high) + 1 > len(chars):
        return Text(f"{low} … {high} λ", style="dim")
    zero = next((c for c, col in enumerate(columns) if grid[col[0]] >= 0), None)
    if zero is not None and len(low) < zero < len(chars) - len(high) - 1 and grid[0] < 0:
        chars[zero] = "0"
    chars[: len(low)] = low
    chars[len(chars) - len(high) :] = high
    return Text("".join(chars) + " λ", style="dim")


def density_block(density: Density | DensityResults, heading: str) -> Group:
    """A heading, the sparkline and its λ axis."""
    note = (
        f"{heading}: {density.probes} probes × {density.steps} steps, σ = {_short(density.sigma)}"
    )
    return Group(
        Text(note, style="bold"),
        sparkline(density.grid, density.density),
        axis(density.grid),
    )


# -- density -----------------------------------------------------------------------------------
def _ritz_row(table: Table, label: str, pairs: list[Eigenvalue]) -> None:
    if not pairs:
        table.add_row(label, "-", "")
        return
    first = pairs[0]
    notes = f"residual {_e(first.residual)}" + ("" if first.converged else ", not converged")
    if pairs[1:]:
        notes += f"; next: {', '.join(_eig(p) for p in pairs[1:])}"
    table.add_row(label, _eig(first), notes)


def density_renderable(report: Report) -> RenderableType:
    """The sparkline, the extreme Ritz values, negative mass and trace; then each layer's."""
    results = report.results
    assert isinstance(results, DensityResults)
    facts = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    for justify in ("left", "right", "left"):
        facts.add_column(justify=justify)  # type: ignore[arg-type]
    _ritz_row(facts, "λmax (largest Ritz value)", results.top)
    _ritz_row(facts, "λmin (smallest Ritz value)", results.bottom)
    mass = results.negative_mass
    facts.add_row("negative mass", _mass(mass), _bounds(mass))
    significant = results.significant_negative_mass
    facts.add_row("significant negative mass", _mass(significant), _bounds(significant))
    facts.add_row(
        "trace (probes)",
        _trace(results.trace),
        f"Hutchinson, {results.probes} probes",
    )
    facts.add_row(
        "quadrature",
        f"{results.probes} × {results.steps}",
        f"probes × steps; σ = {_short(results.sigma)}, {len(results.grid)} points",
    )
    parts: list[RenderableType] = [
        _heading(report, "Eigenvalue density"),
        density_block(results, f"{WHOLE}, {results.parameters:,} parameters"),
        Text(""),
        facts,
    ]
    if results.layers:
        table = Table(title="Per layer (each block's own density)", title_justify="left")
        for column in ["layer", "params", "negative mass", "σ", "λ range", "density (log)"]:
            numeric = column in ("params", "negative mass", "σ")
            table.add_column(column, justify="right" if numeric else "left")
        for name, layer in results.layers.items():
            table.add_row(
                escape(name),
                f"{layer.parameters:,}",
                _mass(layer.negative_mass),
                _short(layer.sigma),
                f"{_short(layer.grid[0])} … {_short(layer.grid[-1])}" if layer.grid else "-",
                sparkline(layer.grid, layer.density, LAYER_WIDTH),
            )
        parts.append(table)
    note = (
        f"{SCALE}\nRitz values: extreme nodes of the first probe, residuals ‖Cy − λy‖ "
        "recomputed from products; grid, density and nodes in --json"
    )
    parts.append(_footer(report, results.engine, note))
    return Group(*parts)


# -- report ------------------------------------------------------------------------------------
SUMMARY_COLUMNS = [
    "λmax",
    "λmin",
    "λmin/λmax",
    "trace ± stderr",
    "trace/param",
    "negative mass",
    "significant neg.",
]


def _summary_cells(summary: Summary) -> list[str]:
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


def _layer_cells(name: str, layer: LayerSummary) -> list[str]:
    d = layer.diagonal
    return [
        escape(name),
        f"{layer.parameters:,}",
        _trace(layer.trace),
        _eig(layer.top),
        _eig(layer.bottom),
        _short(d.min),
        _short(d.max),
        f"{d.fraction_negative:.0%}",
        escape(", ".join(layer.flags)) or "-",
    ]


def _layer_table(layers: dict[str, LayerSummary]) -> Table:
    table = Table()
    columns = ["layer", "params", "trace ± stderr", "λmax", "λmin", "diag min", "diag max"]
    for column in [*columns, "diag neg", "flags"]:
        table.add_column(
            column, justify="left" if column in ("layer", "flags") else "right", overflow="fold"
        )
    for name, layer in layers.items():
        table.add_row(*_layer_cells(name, layer))
    return table


def _summary_table(summary: Summary) -> Table:
    parameters = summary.trace.parameters
    table = Table(
        title=f"Model: all selected layers, {parameters:,} parameters", title_justify="left"
    )
    for column in SUMMARY_COLUMNS:
        table.add_column(column, justify="right")
    table.add_row(*_summary_cells(summary))
    return table


_LEGEND = (
    f"{NOT_CONVERGED} not converged (residual in --json); λmax/λmin of a layer are those of its "
    "own block; diag neg = fraction of negative diagonal entries; negative mass = fraction of "
    "eigenvalues below −threshold (round-off); significant neg. = below a threshold relative "
    "to λmax (the saddle flag's measure); thresholds and quadrature bounds in --json"
)


def report_renderable(report: Report) -> RenderableType:
    """One row per layer, the model summary, the density sparkline, flags and cost."""
    results = report.results
    assert isinstance(results, ReportResults)
    note = f"{_LEGEND}\n{SCALE}\nplanned: {_plan(results.plan)}"
    return Group(
        _heading(report, "Curvature report"),
        _layer_table(results.layers),
        _summary_table(results.summary),
        density_block(results.density, "eigenvalue density"),
        Text(""),
        _flag_lines(results.flags),
        _footer(report, results.engine, note),
    )


# -- check -------------------------------------------------------------------------------------
def check_renderable(report: Report) -> RenderableType:
    """One row per threshold with its margin and PASS/FAIL, then the verdict and baseline."""
    results = report.results
    assert isinstance(results, CheckResults)
    table = Table()
    for column in ["check", "quantity", "limit", "measured", "allowance", "margin", "result"]:
        table.add_column(
            column, justify="left" if column in ("check", "quantity") else "right", overflow="fold"
        )
    for item in results.checks:
        table.add_row(
            escape(item.name),
            escape(
                QUANTITIES.get(item.quantity, item.quantity)
                + (f" [{item.layer}]" if item.layer else "")
            ),
            f"{RELATIONS.get(item.relation, item.relation)} {_g(item.limit)}",
            _pm(item.measured, item.stderr, exact=not item.stderr),
            _short(item.allowance) if item.allowance else "-",
            _signed(item.margin),
            "[green]PASS[/]" if item.passed else "[bold red]FAIL[/]",
        )
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
    footer = _footer(report, results.engine, CHECK_LEGEND)
    return Group(
        _heading(report, "Check"), table, verdict, baseline, _flag_lines(results.flags), footer
    )


# -- compare -----------------------------------------------------------------------------------
COMPARE_COLUMNS = ["λmax", "λmin", "λmin/λmax", "trace", "sig. neg. mass", "trace/param"]


def compare_renderable(report: Report) -> RenderableType:
    """One row per checkpoint, in the order given: the report's summary and flags."""
    results = report.results
    assert isinstance(results, CompareResults)
    table = Table()
    table.add_column("checkpoint", no_wrap=True)
    for column in COMPARE_COLUMNS:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("flags", overflow="fold")  # the one column that wraps when space is short
    names = short_names([c.checkpoint for c in results.checkpoints])
    for name, checkpoint in zip(names, results.checkpoints, strict=True):
        s = checkpoint.summary
        table.add_row(
            escape(name),
            _eig(s.top),
            _eig(s.bottom),
            f"{s.ratio:.3g}",
            _pm(s.trace.value, s.trace.stderr, s.trace.exact),
            _mass(s.significant_negative_mass),
            _short(s.trace_per_parameter),
            escape(_flag_names(checkpoint.flags)),
        )
    note = (
        f"{NOT_CONVERGED} not converged (residual in --json); trace ± stderr (no ±: exact); "
        "sig. neg. mass = fraction of eigenvalues below −1 % of λmax; trace/param = trace per "
        "parameter; flags: the model's, then each layer's; every checkpoint's per-layer rows "
        "are in --json"
    )
    return Group(
        _heading(report, "Comparison"),
        table,
        _footer(report, results.engine, note),
    )
