"""``hesscli density``: the eigenvalue density by stochastic Lanczos quadrature."""

from __future__ import annotations

from typing import Annotated

import typer

from hesscli.cli import estimation_options as est
from hesscli.cli.output import emit
from hesscli.cli.plan_and_plot import check_plot_target, write_plot
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.density_tables import density_renderable
from hesscli.cli.render.plots import density_plot
from hesscli.cli.run_options import RunOptions, with_run_options
from hesscli.runs.density import run_density
from hesscli.runs.files import refuse_to_overwrite


@with_run_options()
def density(
    run: RunOptions,
    probes: est.Probes = None,
    steps: est.Steps = None,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="Also the density of every layer's own block (same data passes).",
            rich_help_panel="Estimation",
        ),
    ] = False,
    points: est.Points = 400,
    sigma: est.Sigma = None,
    plot: est.DensityPlot = None,
) -> None:
    """Eigenvalue density: how the curvature's eigenvalues spread, outliers and negative mass.

    Each probe's Lanczos tridiagonal gives a Gauss quadrature (Ritz values and weights); their
    average, smoothed by a Gaussian, is the density on a grid, with its standard error over the
    probes. The table shows it on a log scale with the extreme Ritz values, the fraction of
    negative eigenvalues and the probes' trace estimate.
    """
    named_inputs = run.named_inputs()
    refuse_to_overwrite(run.output, named_inputs)
    check_plot_target(plot, named_inputs, run.output)
    request = run.request(locals())
    with progress_bars() as progress:
        report = run_density(
            request,
            layer_patterns=run.layers,
            probes=probes,
            steps=steps,
            per_layer=per_layer,
            points=points,
            sigma=sigma,
            progress=progress,
        )
    refuse_to_overwrite(run.output, report.input_files)
    check_plot_target(plot, report.input_files, run.output)
    write_plot(density_plot, report, plot)
    emit(report, as_json=run.json, output=run.output, table=density_renderable)
