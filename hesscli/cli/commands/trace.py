"""``hesscli trace``: Tr(C) and every layer's Tr(C_ll), from the same probes."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from hesscli.cli import options as opt
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.curvature_tables import trace_renderable
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.trace import run_trace

_PANEL = "Trace"


def trace(
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
    products: Annotated[
        int | None,
        typer.Option(
            "--products",
            min=1,
            help="Budget of curvature-vector products (sketch included); --target-error may "
            "stop sooner. Default: 100.",
            rich_help_panel=_PANEL,
        ),
    ] = None,
    target_error: Annotated[
        float | None,
        typer.Option(
            "--target-error",
            callback=opt.number(at_least=0.0),
            help="Stop when the standard error is at most this fraction of |trace| "
            "(default 0.01; 0 turns it off and spends the whole --products budget).",
            rich_help_panel=_PANEL,
        ),
    ] = 0.01,
    method: Annotated[
        Literal["auto", "exact", "hutch++", "hutchinson"],
        typer.Option(
            "--method",
            case_sensitive=False,
            help="auto (exact when the parameter count is within the budget, else Hutch++), "
            "exact (sum of the exact diagonal), hutch++ or hutchinson.",
            rich_help_panel=_PANEL,
        ),
    ] = "auto",
) -> None:
    """Trace of the curvature and of every layer's block, with standard errors.

    Every layer's trace comes from the same probes and data passes as the total.
    """
    refuse_to_overwrite(output, [checkpoint, data, model, config])
    request = opt.request_from(locals())
    with progress_bars() as progress:
        report = run_trace(
            request,
            layer_patterns=layer or [],
            products=products,
            target=target_error or None,
            method=method,
            progress=progress,
        )
    refuse_to_overwrite(output, report.input_files)
    emit(report, as_json=json, output=output, table=trace_renderable)
