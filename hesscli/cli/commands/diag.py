"""``hesscli diag``: statistics of every selected layer's Hessian diagonal."""

from __future__ import annotations

from typing import Annotated

import typer

from hesscli.cli import options as opt
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.curvature_tables import diag_renderable
from hesscli.runs.diag import run_diag
from hesscli.runs.files import refuse_to_overwrite

_PANEL = "Diagonal"


def diag(
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
    exact: Annotated[
        bool | None,
        typer.Option(
            "--exact/--estimate",
            help="Force the exact diagonal, or a Diag++ estimate. Default: exact where "
            "affordable (a fast route, or, below 1M parameters, at most 4096 unit columns for "
            "all layers together), else estimated.",
            show_default=False,
            rich_help_panel=_PANEL,
        ),
    ] = None,
    products: Annotated[
        int | None,
        typer.Option(
            "--products",
            min=1,
            help="Products for the estimate, shared by every estimated layer (default 300; "
            "150 from 1M parameters on).",
            rich_help_panel=_PANEL,
        ),
    ] = None,
    largest: Annotated[
        int,
        typer.Option(
            "--largest",
            min=0,
            help="How many of the largest |entries| to list per layer (JSON).",
            rich_help_panel=_PANEL,
        ),
    ] = 5,
) -> None:
    """Statistics of each layer's diagonal: count, mean, std, quantiles, negatives, largest.

    Exact diagonals equal the element-by-element double-backward loop; estimates say so and
    carry a standard error.
    """
    refuse_to_overwrite(output, [checkpoint, data, model, config])
    request = opt.request_from(locals())
    mode = "auto" if exact is None else ("exact" if exact else "estimate")
    with progress_bars() as progress:
        report = run_diag(
            request,
            layer_patterns=layer or [],
            mode=mode,
            products=products,
            largest=largest,
            progress=progress,
        )
    refuse_to_overwrite(output, report.input_files)
    emit(report, as_json=json, output=output, table=diag_renderable)
