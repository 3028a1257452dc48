"""``hesscli density``: the eigenvalue density by stochastic Lanczos quadrature."""

from __future__ import annotations

from typing import Annotated

import typer

from hesscli.cli import options as opt
from hesscli.cli.commands._overview import check_plot_target, write_plot
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.density_tables import density_renderable
from hesscli.cli.render.plots import density_plot
from hesscli.runs.density import run_density
from hesscli.runs.files import refuse_to_overwrite


def density(
    checkpoint: opt.Checkpoint = None,
    model: opt.Model = None,
    model_kwargs: opt.ModelKwargs = None,
    data: opt.Data = None,
    text_field: TextField = None,
    label_field: LabelField = None,
    max_length: MaxLength = None,
    loss: opt.Loss = None,
    output_key: opt.OutputKey = None,
    max_samples: opt.MaxSamples = None,
    micro_batch: opt.MicroBatch = None,
    layer: opt.Layers = None,
    curvature: opt.Curvature = None,
    hvp_method: opt.HvpMethod = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    allow_tf32: opt.AllowTf32 = None,
    seed: opt.Seed = None,
    train_mode: opt.TrainMode = None,
    distributed: opt.Distributed = None,
    max_memory: opt.MaxMemory = None,
    normalisation: opt.Normalisation = None,
    trust_pickle: opt.TrustPickle = False,
    strict: opt.Strict = None,
    checkpoint_prefix: opt.CheckpointPrefix = None,
    config: opt.Config = None,
    no_config: opt.NoConfig = False,
    json: opt.Json = False,
    output: opt.Output = None,
    probes: opt.Probes = None,
    steps: opt.Steps = None,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="Also the density of every layer's own block (same data passes).",
            rich_help_panel="Estimation",
        ),
    ] = False,
    points: opt.Points = 400,
    sigma: opt.Sigma = None,
    plot: opt.DensityPlot = None,
) -> None:
    """Eigenvalue density: how the curvature's eigenvalues spread, outliers and negative mass.

    Each probe's Lanczos tridiagonal gives a Gauss quadrature (Ritz values and weights); their
    average, smoothed by a Gaussian, is the density on a grid, with its standard error over the
    probes. The table shows it on a log scale with the extreme Ritz values, the fraction of
    negative eigenvalues and the probes' trace estimate.
    """
    named_inputs = [checkpoint, data, model, config]
    refuse_to_overwrite(output, named_inputs)
    check_plot_target(plot, named_inputs, output)
    request = opt.request_from(locals())
    with progress_bars() as progress:
        report = run_density(
            request,
            layer_patterns=layer or [],
            probes=probes,
            steps=steps,
            per_layer=per_layer,
            points=points,
            sigma=sigma,
            progress=progress,
        )
    refuse_to_overwrite(output, report.input_files)
    check_plot_target(plot, report.input_files, output)
    write_plot(density_plot, report, plot)
    emit(report, as_json=json, output=output, table=density_renderable)
