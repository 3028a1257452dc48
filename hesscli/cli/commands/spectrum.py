"""``hesscli spectrum``: top and most negative eigenvalues, of the model and of every layer."""

from __future__ import annotations

from typing import Annotated

import typer

from hesscli.cli import estimation_options as est
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.curvature_tables import spectrum_renderable
from hesscli.cli.run_options import RunOptions, with_run_options
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.spectrum import run_spectrum

_PANEL = "Spectrum"


@with_run_options()
def spectrum(
    run: RunOptions,
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
            callback=est.relative_tolerance,
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
    refuse_to_overwrite(run.output, run.named_inputs())
    request = run.request(locals())
    with progress_bars() as progress:
        report = run_spectrum(
            request,
            layer_patterns=run.layers,
            top_k=top_k,
            bottom_k=bottom_k,
            per_layer=per_layer,
            tol=tol,
            max_steps=max_steps,
            progress=progress,
        )
    refuse_to_overwrite(run.output, report.input_files)
    emit(report, as_json=run.json, output=run.output, table=spectrum_renderable)
