"""``hesscli report``: every quantity, one row per layer, a summary, flags and the density."""

from __future__ import annotations

from hesscli.cli import estimation_options as est
from hesscli.cli.output import emit
from hesscli.cli.plan_and_plot import announce_plan, check_plot_target, write_plot
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.plots import density_plot
from hesscli.cli.render.report_tables import report_renderable
from hesscli.cli.run_options import RunOptions, report_settings, with_run_options
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.report import run_report


@with_run_options()
def report(
    run: RunOptions,
    probes: est.Probes = None,
    steps: est.Steps = None,
    tol: est.ReportTol = None,
    max_steps: est.ReportMaxSteps = None,
    diag_products: est.DiagProducts = None,
    lr: est.LearningRate = None,
    points: est.Points = 400,
    sigma: est.Sigma = None,
    plot: est.DensityPlot = None,
) -> None:
    """Everything at once: per layer trace, extreme eigenvalues and diagonal; model summary.

    One row per layer (parameters, trace ± stderr, λmax and λmin of its block, diagonal
    min/max and fraction negative, flags), then the model's λmax, λmin, their ratio, trace,
    trace per parameter and negative mass, the density, and the flags with their reasons. The
    eigenvalue processes and the density's probes share data passes; the plan is printed on
    stderr before the long part starts.
    """
    named_inputs = run.named_inputs()
    refuse_to_overwrite(run.output, named_inputs)
    check_plot_target(plot, named_inputs, run.output)
    request = run.request(locals())
    settings = report_settings(locals())
    with progress_bars() as progress:
        result = run_report(
            request,
            layer_patterns=run.layers,
            settings=settings,
            progress=progress,
            announce=announce_plan,
        )
    refuse_to_overwrite(run.output, result.input_files)
    check_plot_target(plot, result.input_files, run.output)
    write_plot(density_plot, result, plot)
    emit(result, as_json=run.json, output=run.output, table=report_renderable)
