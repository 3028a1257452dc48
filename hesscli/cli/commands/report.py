"""``hesscli report``: every quantity, one row per layer, a summary, flags and the density."""

from __future__ import annotations

from hesscli.cli import options as opt
from hesscli.cli.commands._overview import announce_plan, check_plot_target, write_plot
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.plots import density_plot
from hesscli.cli.render.report_tables import report_renderable
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.report import ReportSettings, run_report


def report(
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
    tol: opt.ReportTol = None,
    max_steps: opt.ReportMaxSteps = None,
    diag_products: opt.DiagProducts = None,
    lr: opt.LearningRate = None,
    points: opt.Points = 400,
    sigma: opt.Sigma = None,
    plot: opt.DensityPlot = None,
) -> None:
    """Everything at once: per layer trace, extreme eigenvalues and diagonal; model summary.

    One row per layer (parameters, trace ± stderr, λmax and λmin of its block, diagonal
    min/max and fraction negative, flags), then the model's λmax, λmin, their ratio, trace,
    trace per parameter and negative mass, the density, and the flags with their reasons. The
    eigenvalue processes and the density's probes share data passes; the plan is printed on
    stderr before the long part starts.
    """
    named_inputs = [checkpoint, data, model, config]
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
        result = run_report(
            request,
            layer_patterns=layer or [],
            settings=settings,
            progress=progress,
            announce=announce_plan,
        )
    refuse_to_overwrite(output, result.input_files)
    check_plot_target(plot, result.input_files, output)
    write_plot(density_plot, result, plot)
    emit(result, as_json=json, output=output, table=report_renderable)
