"""``spectrum``, ``trace`` and ``diag`` as Rich tables: one row per layer, then cost and route.

Only formatting happens here; every number comes from the result objects.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from hesscli.results import (
    DiagonalResults,
    Eigenvalue,
    Engine,
    Report,
    RunSettings,
    Spectrum,
    SpectrumResults,
    TraceResults,
)

WHOLE = "(all selected)"


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(value: float) -> str:
    return f"{value:.3g}"


def _e(value: float) -> str:
    return f"{value:.1e}"


def _title(report: Report, what: str) -> str:
    inputs, settings = report.inputs, report.settings
    return (
        f"{what} of the {settings.curvature} — {inputs.model}, {inputs.samples:,} samples, "
        f"{inputs.trainable_parameters:,} trainable parameters, {settings.dtype} on "
        f"{settings.device}"
    )


def run_lines(settings: RunSettings) -> list[str]:
    """How the run computed: the loss's normalisation, the processes, the memory plan."""
    lines = []
    if settings.normalisation is not None:
        lines.append(f"loss: {settings.normalisation.description}")
    if settings.distributed is not None:
        shards = " + ".join(f"{n:,}" for n in settings.distributed.samples_per_rank)
        lines.append(
            f"processes: {settings.distributed.world_size} ({settings.distributed.backend}), "
            f"samples per rank {shards}"
        )
    return lines


def _footer(report: Report, engine: Engine, extra: str = "") -> Text:
    cost = report.cost
    lines = [
        f"cost: {cost.seconds:.2f} s, {cost.hvps:,} curvature-vector products over all samples "
        f"in {cost.data_passes:,} data passes (+{cost.check_hvps} route-check products"
        + (
            f", {cost.output_space_products:,} layer-output-space products"
            if cost.output_space_products
            else ""
        )
        + ")",
        f"route: {engine.route} — {engine.reason}",
        *([f"attention: {engine.attention}"] if engine.attention else []),
        *run_lines(report.settings),
    ]
    if extra:
        lines.insert(0, extra)
    return Text("\n".join(lines), style="dim")


def _values(pairs: list[Eigenvalue]) -> str:
    return ", ".join(_g(p.value) for p in pairs) or "-"


def _first(pairs: list[Eigenvalue]) -> tuple[str, str]:
    return (_g(pairs[0].value), _e(pairs[0].residual)) if pairs else ("-", "-")


def _spectrum_row(table: Table, name: str, spectrum: Spectrum | SpectrumResults, size: int) -> None:
    top, bottom = spectrum.top, spectrum.bottom
    converged = all(p.converged for p in [*top, *bottom])
    table.add_row(
        name,
        f"{size:,}",
        *_first(top),
        _values(top[1:]),
        *_first(bottom),
        "yes" if converged else "[bold red]NO[/]",
        f"{spectrum.steps}" + (" (exact)" if spectrum.exact else ""),
    )


def spectrum_renderable(report: Report) -> RenderableType:
    """One row for the selected layers together, then one per layer with ``--per-layer``."""
    results = report.results
    assert isinstance(results, SpectrumResults)
    table = Table(title=_title(report, "Extreme eigenvalues"), title_justify="left")
    for column, justify in [
        ("layer", "left"),
        ("params", "right"),
        ("λmax", "right"),
        ("residual", "right"),
        ("next largest", "left"),
        ("λmin", "right"),
        ("residual", "right"),
        ("converged", "center"),
        ("steps", "right"),
    ]:
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    _spectrum_row(table, WHOLE, results, report.inputs.trainable_parameters)
    for name, layer in results.layers.items():
        _spectrum_row(table, name, layer, layer.parameters)
    note = (
        f"residual = ‖Cy − λy‖ recomputed from products; converged: residual ≤ "
        f"{results.tolerance:.0e} × ‖C‖"
    )
    return Group(table, _footer(report, results.engine, note))


def trace_renderable(report: Report) -> RenderableType:
    """Total trace and every layer's, with standard errors and 95 % intervals."""
    results = report.results
    assert isinstance(results, TraceResults)
    table = Table(title=_title(report, "Trace"), title_justify="left")
    for column in ["layer", "parameters", "trace", "± stderr", "95 % interval ±", "exact"]:
        table.add_column(column, justify="left" if column == "layer" else "right")
    rows = [(WHOLE, results.trace), *results.layers.items()]
    for name, trace in rows:
        table.add_row(
            name,
            f"{trace.parameters:,}",
            _g(trace.value),
            "0" if trace.exact else _e(trace.stderr),
            "0" if trace.exact else _e(trace.interval),
            "yes" if trace.exact else "no",
        )
    if results.method == "exact":
        how = "method: exact (sum of the exact diagonal)"
    else:
        target = "-" if results.target is None else f"{results.target:g}"
        how = (
            f"method: {results.method} ({results.sketch} sketch columns, {results.probes} "
            f"probes); stopped on {results.stopped} (target relative error {target}, budget "
            f"{results.budget if results.budget is not None else '-'})"
        )
    return Group(table, _footer(report, results.engine, how))


def diag_renderable(report: Report) -> RenderableType:
    """Statistics of every layer's diagonal, and its largest |entries|."""
    results = report.results
    assert isinstance(results, DiagonalResults)
    table = Table(title=_title(report, "Diagonal"), title_justify="left")
    columns = ["layer", "count", "mean", "std", "min", "median", "max"]
    columns += ["neg", "sum", "exact", "largest |entry|"]
    for column in columns:
        table.add_column(
            column,
            justify="left" if column in ("layer", "largest |entry|") else "right",
            overflow="fold",
        )
    for name, s in results.layers.items():
        top = s.largest[0] if s.largest else None
        where = "-" if top is None else f"{top.parameter}{top.index} {_short(top.value)}"
        table.add_row(
            name,
            f"{s.count:,}",
            *(_short(v) for v in (s.mean, s.std, s.min, s.median, s.max)),
            f"{s.fraction_negative:.0%}",
            _short(s.sum),
            "yes" if s.exact else f"no (±{_e(s.stderr)})",
            where,
        )
    methods = "\n".join(f"{name}: {s.method}" for name, s in results.layers.items())
    note = "neg = fraction of negative entries; p01/p99 and the largest entries are in --json\n"
    return Group(table, _footer(report, results.engine, note + "methods:\n" + methods))
