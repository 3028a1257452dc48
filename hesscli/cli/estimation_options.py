"""Options of the estimating commands (density, report, check, compare); the float validator.

Kept beside :mod:`hesscli.cli.options` (the options of every run) so that neither module grows
past a readable size; the names are part of the same public contract. :func:`number` is the one
validator of float options: Python's ``float`` parses ``nan``, ``inf`` and ``1e999``, and none of
them is a tolerance, a threshold or a scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

_OUTPUT = "Output"
_ESTIMATION = "Estimation"


def number(
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
) -> Callable[[float | None], float | None]:
    """The one validator of float options: finite, and within the bounds given.

    Python's ``float`` accepts ``nan``, ``inf``, ``-infinity`` and ``1e999``; none of them is a
    tolerance, a threshold or a scale. ``nan`` in particular passes every ``min=`` range check,
    because every comparison with it is false.

    Args:
        above: The value must be greater than this.
        at_least: The value must be at least this.
        below: The value must be less than this.

    Returns:
        A typer callback returning the value unchanged, or raising ``typer.BadParameter``.
    """

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if above is not None and not value > above:
            raise typer.BadParameter(f"{value:g} is not > {above:g}")
        if at_least is not None and not value >= at_least:
            raise typer.BadParameter(f"{value:g} is not >= {at_least:g}")
        if below is not None and not value < below:
            raise typer.BadParameter(f"{value:g} is not < {below:g}")
        return value

    return check


#: Options that divide or scale (``--sigma``, ``--lr``): finite and > 0.
positive_float = number(above=0.0)
#: Thresholds (``--max-eigenvalue``...): any finite number.
finite_float = number()
#: Relative tolerances of an eigenvalue (``--tol``): in (0, 1).
relative_tolerance = number(above=0.0, below=1.0)


Probes = Annotated[
    int | None,
    typer.Option(
        "--probes",
        min=1,
        help="Random probe vectors of the density (stochastic Lanczos quadrature); more "
        "probes shrink its standard error and that of the probes' trace. Default: 8, or 4 "
        "from 1M parameters.",
        rich_help_panel=_ESTIMATION,
    ),
]
Steps = Annotated[
    int | None,
    typer.Option(
        "--steps",
        min=1,
        help="Lanczos steps per probe (quadrature nodes per probe, one data pass each). "
        "Default: 80, or 40 from 1M parameters.",
        rich_help_panel=_ESTIMATION,
    ),
]
Points = Annotated[
    int,
    typer.Option(
        "--points", min=2, help="Grid points of the smoothed density.", rich_help_panel=_ESTIMATION
    ),
]
Sigma = Annotated[
    float | None,
    typer.Option(
        "--sigma",
        callback=positive_float,
        help="Width of the Gaussian that smooths the quadrature, in units of λ. Default: "
        "automatic (a fraction of the spectrum's span).",
        rich_help_panel=_ESTIMATION,
    ),
]
ReportTol = Annotated[
    float | None,
    typer.Option(
        "--tol",
        callback=relative_tolerance,
        help="Eigenvalue tolerance: stop when every value's error (‖r‖²/gap, at most the "
        "residual ‖Cy − λy‖) ≤ TOL × ‖C‖. Default: 1e-4 in float32, 1e-8 in float64.",
        rich_help_panel=_ESTIMATION,
    ),
]
ReportMaxSteps = Annotated[
    int | None,
    typer.Option(
        "--max-steps",
        min=1,
        help="Lanczos steps at most for the eigenvalues (default 300); unconverged values "
        "are flagged.",
        rich_help_panel=_ESTIMATION,
    ),
]
DiagProducts = Annotated[
    int | None,
    typer.Option(
        "--diag-products",
        min=1,
        help="Products for the Diag++ estimate of a layer's diagonal when the layer has no "
        "fast exact diagonal (default 300; 150 from 1M parameters on).",
        rich_help_panel=_ESTIMATION,
    ),
]
LearningRate = Annotated[
    float | None,
    typer.Option(
        "--lr",
        callback=positive_float,
        help="Learning rate of the training run: flags 'sharp' when λmax > 2/LR (gradient "
        "descent with this step size is unstable along the top eigenvector).",
        rich_help_panel=_ESTIMATION,
    ),
]
DensityPlot = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Also draw the density to FILE (format from its suffix: .png, .pdf, .svg; "
        "needs matplotlib).",
        show_default=False,
        rich_help_panel=_OUTPUT,
    ),
]
