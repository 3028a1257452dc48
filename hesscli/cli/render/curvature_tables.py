"""``spectrum``, ``trace`` and ``diag`` as Rich tables: one row per layer, then cost and route.

Only formatting happens here; every number comes from the result objects.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from hesscli.cli.render.common import (
    WHOLE,
    footer,
    general,
    heading,
    sci,
    short,
)
from hesscli.cli.render.fit import Column, FitTable
from hesscli.results import (
    DiagonalResults,
    DiagonalSummary,
    Eigenvalue,
    Report,
    Spectrum,
    SpectrumResults,
    TraceResults,
)

__all__ = ["WHOLE", "diag_renderable", "spectrum_renderable", "trace_renderable"]

NAME = Column("layer", "name", "left")


def _values(pairs: list[Eigenvalue]) -> str:
    return ", ".join(general(p.value) for p in pairs) or "-"


def _first(pairs: list[Eigenvalue]) -> tuple[str, str]:
    return (general(pairs[0].value), sci(pairs[0].residual)) if pairs else ("-", "-")


SPECTRUM_COLUMNS = [
    NAME,
    Column("params", drop=3),
    Column("λmax"),
    Column("residual", drop=4),
    Column("next largest", "text", "left", drop=1),
    Column("λmin"),
    Column("residual", drop=5),
    Column("converged", justify="center"),
    Column("steps", drop=2),
]


def _spectrum_row(name: str, spectrum: Spectrum | SpectrumResults, size: int) -> list[str | Text]:
    top, bottom = spectrum.top, spectrum.bottom
    converged = all(p.converged for p in [*top, *bottom])
    return [
        name,
        f"{size:,}",
        *_first(top),
        _values(top[1:]),
        *_first(bottom),
        Text("yes") if converged else Text("NO", style="bold red"),
        f"{spectrum.steps}" + (" (exact)" if spectrum.exact else ""),
    ]


def spectrum_renderable(report: Report) -> RenderableType:
    """One row for the selected layers together, then one per layer with ``--per-layer``."""
    results = report.results
    assert isinstance(results, SpectrumResults)
    rows = [_spectrum_row(WHOLE, results, report.inputs.trainable_parameters)]
    rows += [_spectrum_row(name, layer, layer.parameters) for name, layer in results.layers.items()]
    note = (
        f"residual = ‖Cy − λy‖ (an eigenvalue lies within it); converged: error "
        f"(‖r‖²/gap, in --json) ≤ {results.tolerance:.0e} × ‖C‖"
    )
    return Group(
        heading(report, "Extreme eigenvalues"),
        FitTable(SPECTRUM_COLUMNS, rows),
        footer(report, results.engine, note),
    )


TRACE_COLUMNS = [
    NAME,
    Column("parameters", drop=2),
    Column("trace"),
    Column("± stderr"),
    Column("95 % interval ±", drop=1),
    Column("exact", drop=3),
]


def trace_renderable(report: Report) -> RenderableType:
    """Total trace and every layer's, with standard errors and 95 % intervals."""
    results = report.results
    assert isinstance(results, TraceResults)
    rows: list[list[str | Text]] = [
        [
            name,
            f"{trace.parameters:,}",
            general(trace.value),
            "0" if trace.exact else sci(trace.stderr),
            "0" if trace.exact else sci(trace.interval),
            "yes" if trace.exact else "no",
        ]
        for name, trace in [(WHOLE, results.trace), *results.layers.items()]
    ]
    if results.method == "exact":
        how = "method: exact (sum of the exact diagonal)"
    else:
        target = "-" if results.target is None else f"{results.target:g}"
        how = (
            f"method: {results.method} ({results.sketch} sketch columns, {results.probes} "
            f"probes); stopped on {results.stopped} (target relative error {target}, budget "
            f"{results.budget if results.budget is not None else '-'})"
        )
    return Group(
        heading(report, "Trace"),
        FitTable(TRACE_COLUMNS, rows),
        footer(report, results.engine, how),
    )


DIAG_COLUMNS = [
    NAME,
    Column("count", drop=5),
    Column("mean"),
    Column("std", drop=3),
    Column("min"),
    Column("median", drop=2),
    Column("max"),
    Column("neg"),
    Column("sum", drop=4),
    Column("exact"),
    Column("largest |entry|", "text", "left", drop=1),
]


def _largest(s: DiagonalSummary) -> str:
    """The largest |entry| and where it is: ``0.126 at fc3.weight[1,19]``."""
    if not s.largest:
        return "-"
    top = s.largest[0]
    return f"{short(top.value)} at {top.parameter}[{','.join(map(str, top.index))}]"


def _methods(results: DiagonalResults) -> str:
    """How each layer's diagonal was obtained, grouped by method (the JSON has each layer's)."""
    groups: dict[str, list[str]] = {}
    for name, s in results.layers.items():
        groups.setdefault(s.method, []).append(name)
    parts = [
        f"{method} ({', '.join(names) if len(names) <= 4 else f'{len(names)} layers'})"
        for method, names in groups.items()
    ]
    return "methods: " + "; ".join(parts)


def diag_renderable(report: Report) -> RenderableType:
    """Statistics of every layer's diagonal, and its largest |entries|."""
    results = report.results
    assert isinstance(results, DiagonalResults)
    rows: list[list[str | Text]] = [
        [
            name,
            f"{s.count:,}",
            *(short(v) for v in (s.mean, s.std, s.min, s.median, s.max)),
            f"{s.fraction_negative:.0%}",
            short(s.sum),
            "yes" if s.exact else f"no (±{sci(s.stderr)})",
            _largest(s),
        ]
        for name, s in results.layers.items()
    ]
    note = (
        "neg = fraction of negative entries; p01/p99 and the largest entries are in --json\n"
        + _methods(results)
    )
    return Group(
        heading(report, "Diagonal"),
        FitTable(DIAG_COLUMNS, rows),
        footer(report, results.engine, note),
    )
