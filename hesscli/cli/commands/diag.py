"""``hesscli diag``: statistics of every selected layer's Hessian diagonal."""

from __future__ import annotations

from typing import Annotated

import typer

from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.curvature_tables import diag_renderable
from hesscli.cli.run_options import RunOptions, with_run_options
from hesscli.runs.diag import run_diag
from hesscli.runs.files import refuse_to_overwrite

_PANEL = "Diagonal"


@with_run_options()
def diag(
    run: RunOptions,
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
    refuse_to_overwrite(run.output, run.named_inputs())
    request = run.request(locals())
    mode = "auto" if exact is None else ("exact" if exact else "estimate")
    with progress_bars() as progress:
        report = run_diag(
            request,
            layer_patterns=run.layers,
            mode=mode,
            products=products,
            largest=largest,
            progress=progress,
        )
    refuse_to_overwrite(run.output, report.input_files)
    emit(report, as_json=run.json, output=run.output, table=diag_renderable)
