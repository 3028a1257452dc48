"""``hesscli spectrum``: top and most negative eigenvalues, of the model and of every layer."""

from __future__ import annotations

from typing import Annotated

import typer

from hesscli.cli import options as opt
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.curvature_tables import spectrum_renderable
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.spectrum import run_spectrum

_PANEL = "Spectrum"


def spectrum(
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
    top_k: Annotated[
        int,
        typer.Option("--top-k", min=0, help="Largest eigenvalues to find.", rich_help_panel=_PANEL),
    ] = 5,
    bottom_k: Annotated[
        int,
        typer.Option(
            "--bottom-k",
            min=0,
            help="Most negative (smallest) eigenvalues to find.",
            rich_help_panel=_PANEL,
        ),
    ] = 1,
    per_layer: Annotated[
        bool,
        typer.Option(
            "--per-layer",
            help="Also the eigenvalues of every layer's own block (one Lanczos per layer, "
            "all in the same data passes).",
            rich_help_panel=_PANEL,
        ),
    ] = False,
    tol: Annotated[
        float | None,
        typer.Option(
            "--tol",
            callback=opt.relative_tolerance,
            help="Stop when every eigenvalue's error (‖r‖²/gap, at most the residual "
            "‖Cy − λy‖) ≤ TOL × ‖C‖. Default: 1e-4 in float32, 1e-8 in float64.",
            rich_help_panel=_PANEL,
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            min=1,
            help="Lanczos steps at most (default 300); unconverged values are flagged.",
            rich_help_panel=_PANEL,
        ),
    ] = None,
) -> None:
    """Top-k and most negative eigenvalues, each with its residual, error and converged flag.

    Lanczos with full reorthogonalisation, stopped when every value's error (‖r‖²/gap, at
    most the residual) meets the tolerance; see docs/commands.md.
    """
    refuse_to_overwrite(output, [checkpoint, data, model, config])
    request = opt.request_from(locals())
    with progress_bars() as progress:
        report = run_spectrum(
            request,
            layer_patterns=layer or [],
            top_k=top_k,
            bottom_k=bottom_k,
            per_layer=per_layer,
            tol=tol,
            max_steps=max_steps,
            progress=progress,
        )
    refuse_to_overwrite(output, report.input_files)
    emit(report, as_json=json, output=output, table=spectrum_renderable)
