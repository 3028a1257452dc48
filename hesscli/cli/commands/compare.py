"""``hesscli compare``: the report's summary for several checkpoints of one model, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hesscli.cli import options as opt
from hesscli.cli.commands._overview import announce_first_plan, check_plot_target, write_plot
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.check_tables import compare_renderable
from hesscli.cli.render.plots import trajectory_plot
from hesscli.runs.compare import run_compare
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.report import ReportSettings


def compare(
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            help="Two or more checkpoints of the same model, in training order.",
            show_default=False,
        ),
    ],
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
    probes: opt.Probes = 8,
    steps: opt.Steps = 80,
    tol: opt.ReportTol = None,
    max_steps: opt.ReportMaxSteps = None,
    diag_products: opt.DiagProducts = None,
    lr: opt.LearningRate = None,
    points: opt.Points = 400,
    sigma: opt.Sigma = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw λmax, trace, λmin and negative mass along the checkpoints to FILE "
            "(format from its suffix: .png, .pdf, .svg; needs matplotlib).",
            show_default=False,
            rich_help_panel="Output",
        ),
    ] = None,
) -> None:
    """Compare checkpoints of one model (a training run): λmax, λmin, trace, negative mass.

    Each checkpoint is measured like 'report', with the same data, seeds and settings, so the
    rows differ only by the weights. One row per checkpoint in the order given; per-layer
    numbers are in --json.
    """
    if len(checkpoints) < 2:
        raise typer.BadParameter(
            f"got {len(checkpoints)} checkpoint; compare needs at least 2",
            param_hint="'checkpoints'",
        )
    named_inputs = [*checkpoints, data, model, config]
    refuse_to_overwrite(output, named_inputs)
    check_plot_target(plot, named_inputs, output)
    request = opt.request_from(locals())
    settings = ReportSettings(
        probes=probes,
        steps=steps,
        tol=tol,
        max_steps=max_steps,
        diag_products=diag_products,
        lr=lr,
        points=points,
        sigma=sigma,
    )
    with progress_bars() as progress:
        report = run_compare(
            request,
            checkpoints=checkpoints,
            layer_patterns=layer or [],
            settings=settings,
            progress=progress,
            announce=announce_first_plan(len(checkpoints)),
        )
    refuse_to_overwrite(output, report.input_files)
    check_plot_target(plot, report.input_files, output)
    write_plot(trajectory_plot, report, plot)
    emit(report, as_json=json, output=output, table=compare_renderable)
