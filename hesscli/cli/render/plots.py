"""Plots of ``density``, ``report`` and ``compare`` results; they only write files.

matplotlib is an optional extra (``hesscli[plot]``): it is imported inside the functions, through
its object API (:class:`matplotlib.figure.Figure` and ``savefig``), never ``pyplot``, so no global
backend or figure state is touched. Without it the functions raise :class:`PlotUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hesscli.cli.render.check_tables import short_names
from hesscli.cli.render.curvature_tables import WHOLE
from hesscli.results import CompareResults, Density, DensityResults, Report, ReportResults

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Decades below the peak where the log-scale density is floored (zeros cannot be drawn).
FLOOR_DECADES = 8


class PlotUnavailable(Exception):
    """matplotlib (the ``plot`` extra) cannot be imported."""


def _figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(str(exc)) from exc
    return Figure(figsize=(width, height), layout="constrained")


def supported_formats() -> set[str] | None:
    """File suffixes matplotlib can write (``None`` when it is not installed)."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return None
    return set(FigureCanvasBase.get_supported_filetypes())


def _mass(density: Density | DensityResults) -> str:
    mass = density.negative_mass
    return f"negative mass {mass.value:.2%} ± {mass.stderr:.2%}"


def _draw_density(
    ax: Axes,
    name: str,
    density: Density | DensityResults,
    marks: Sequence[float],
    *,
    legend: bool,
) -> None:
    """One density on a log scale, its quadrature nodes as a rug, ``marks`` as dashed lines."""
    grid = np.asarray(density.grid, dtype=float)
    values = np.asarray(density.density, dtype=float)
    peak = float(values.max()) if values.size else 0.0
    floor = peak * 10.0**-FLOOR_DECADES if peak > 0 else 1e-12
    nodes = np.concatenate([np.asarray(n, dtype=float) for n in density.nodes] or [np.zeros(0)])
    ends = [*grid[[0, -1]], *nodes, *marks] if grid.size else [*nodes, *marks, 0.0]
    low, high = min(ends), max(ends)
    pad = 0.03 * (high - low) or 1.0
    ax.set_xlim(low - pad, high + pad)
    if low < 0:
        ax.axvspan(low - pad, 0.0, color="tab:red", alpha=0.08, label=f"λ < 0: {_mass(density)}")
    stderr = np.asarray(density.stderr, dtype=float)
    if stderr.shape == values.shape and values.size:
        ax.fill_between(
            grid,
            np.maximum(values - stderr, floor),
            np.maximum(values + stderr, floor),
            color="tab:blue",
            alpha=0.2,
            linewidth=0,
            label="± standard error over the probes",
        )
    ax.plot(grid, np.maximum(values, floor), color="tab:blue", linewidth=1.2, label="density")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    if nodes.size:
        ax.vlines(
            nodes,
            0.0,
            0.04,
            transform=ax.get_xaxis_transform(),
            color="black",
            alpha=0.4,
            linewidth=0.6,
            label="quadrature nodes (Ritz values)",
        )
    label = f"largest Ritz value{'s' if len(marks) > 1 else ''}: " + ", ".join(
        f"{value:.4g}" for value in marks
    )
    for i, value in enumerate(marks):
        ax.axvline(
            value, color="tab:red", linestyle="--", linewidth=1.0, label=label if i == 0 else None
        )
    ax.set_title(
        f"{name}: {density.parameters:,} parameters, {_mass(density)} "
        f"({density.probes} probes × {density.steps} steps, σ = {density.sigma:.3g})",
        fontsize="medium",
    )
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density (log scale)")
    if legend:
        ax.legend(fontsize="small", loc="best", framealpha=0.9)


def density_plot(report: Report, path: Path) -> None:
    """Draw the eigenvalue density of a ``density`` or ``report`` run to ``path``.

    The top eigenvalues (the largest Ritz values, or the report's λmax) are dashed lines and
    always inside the x range, the negative half-line is shaded, and ``--per-layer`` densities
    get a panel each.
    """
    results = report.results
    if isinstance(results, DensityResults):
        panels = [(WHOLE, results, [e.value for e in results.top])]
        panels += [(name, layer, []) for name, layer in results.layers.items()]
    elif isinstance(results, ReportResults):
        panels = [(WHOLE, results.density, [results.summary.top.value])]
    else:
        raise TypeError(f"no density in a {report.command} report")
    fig = _figure(9.0, 3.6 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for i, (ax, (name, density, marks)) in enumerate(zip(axes, panels, strict=True)):
        _draw_density(ax, name, density, marks, legend=i == 0)
    fig.suptitle(_title(report, "Eigenvalue density"))
    fig.savefig(path)


def _title(report: Report, what: str) -> str:
    inputs, settings = report.inputs, report.settings
    return f"{what} of the {settings.curvature} — {inputs.model}, {inputs.samples:,} samples"


def trajectory_plot(report: Report, path: Path) -> None:
    """Draw λmax, trace, λmin and negative mass along the checkpoints of ``compare``.

    Stochastic values carry their standard errors as error bars; with a learning rate in the
    settings, the λmax panel shows the stability bound 2/lr.
    """
    results = report.results
    if not isinstance(results, CompareResults):
        raise TypeError(f"no checkpoints in a {report.command} report")
    summaries = [c.summary for c in results.checkpoints]
    names = short_names([c.checkpoint for c in results.checkpoints])
    x = np.arange(len(summaries))
    fig = _figure(max(7.0, 0.9 * len(summaries) + 4.0), 7.0)
    from matplotlib.ticker import PercentFormatter  # importable: _figure succeeded

    top, trace, bottom, mass = fig.subplots(2, 2, sharex=True).ravel()

    top.plot(x, [s.top.value for s in summaries], marker="o", label="λmax")
    bound = report.settings.options.get("stability_bound")
    if isinstance(bound, int | float):
        # 2/lr: gradient descent with step lr is unstable along directions sharper than this.
        top.axhline(bound, color="tab:red", linestyle="--", label=f"2/lr = {bound:.4g}")
    top.set_title("largest eigenvalue λmax")
    top.legend(fontsize="small")

    trace.errorbar(
        x,
        [s.trace.value for s in summaries],
        yerr=[s.trace.stderr for s in summaries],
        marker="o",
        capsize=3,
    )
    trace.set_title("trace (± standard error)")

    bottom.plot(x, [s.bottom.value for s in summaries], marker="o", color="tab:purple")
    bottom.axhline(0.0, color="gray", linewidth=0.8)
    bottom.set_title("smallest eigenvalue λmin")

    for series, color, label in (
        ([s.negative_mass for s in summaries], "tab:red", "below round-off"),
        ([s.significant_negative_mass for s in summaries], "tab:orange", "significant"),
    ):
        mass.errorbar(
            x,
            [m.value for m in series],
            yerr=[m.stderr for m in series],
            marker="o",
            capsize=3,
            color=color,
            label=label,
        )
    mass.set_title("negative mass (± s.e.)")
    mass.legend(fontsize="small")
    mass.yaxis.set_major_formatter(PercentFormatter(1.0))

    for ax in (top, trace, bottom, mass):
        ax.grid(alpha=0.3)
    for ax in (bottom, mass):  # the x axis is shared: labels on the bottom row only
        ax.set_xticks(x, names, rotation=30, ha="right")
    fig.suptitle(_title(report, "Curvature along checkpoints"))
    fig.savefig(path)
