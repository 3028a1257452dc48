"""``hesscli compare``: the report's summary for several checkpoints of one model, in order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hesscli.cli import estimation_options as est
from hesscli.cli.output import emit
from hesscli.cli.plan_and_plot import announce_first_plan, check_plot_target, write_plot
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.check_tables import compare_renderable
from hesscli.cli.render.plots import trajectory_plot
from hesscli.cli.run_options import RunOptions, report_settings, with_run_options
from hesscli.runs.compare import run_compare
from hesscli.runs.files import refuse_to_overwrite


@with_run_options(leave_out=("checkpoint",))
def compare(
    checkpoints: Annotated[
        list[str],
        typer.Argument(
            help="Two or more checkpoints of the same model, in training order.",
            show_default=False,
        ),
    ],
    run: RunOptions,
    probes: est.Probes = 8,
    steps: est.Steps = 80,
    tol: est.ReportTol = None,
    max_steps: est.ReportMaxSteps = None,
    diag_products: est.DiagProducts = None,
    lr: est.LearningRate = None,
    points: est.Points = 400,
    sigma: est.Sigma = None,
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
    named_inputs = run.named_inputs(*checkpoints)
    refuse_to_overwrite(run.output, named_inputs)
    check_plot_target(plot, named_inputs, run.output)
    request = run.request(locals())
    settings = report_settings(locals())
    with progress_bars() as progress:
        report = run_compare(
            request,
            checkpoints=checkpoints,
            layer_patterns=run.layers,
            settings=settings,
            progress=progress,
            announce=announce_first_plan(len(checkpoints)),
        )
    refuse_to_overwrite(run.output, report.input_files)
    check_plot_target(plot, report.input_files, run.output)
    write_plot(trajectory_plot, report, plot)
    emit(report, as_json=run.json, output=run.output, table=compare_renderable)
