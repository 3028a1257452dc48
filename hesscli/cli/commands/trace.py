"""``hesscli trace``: Tr(C) and every layer's Tr(C_ll), from the same probes."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from hesscli.cli import estimation_options as est
from hesscli.cli.output import emit
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.curvature_tables import trace_renderable
from hesscli.cli.run_options import RunOptions, with_run_options
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.trace import run_trace

_PANEL = "Trace"


@with_run_options()
def trace(
    run: RunOptions,
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
            callback=est.number(at_least=0.0),
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
    refuse_to_overwrite(run.output, run.named_inputs())
    request = run.request(locals())
    with progress_bars() as progress:
        report = run_trace(
            request,
            layer_patterns=run.layers,
            products=products,
            target=target_error or None,
            method=method,
            progress=progress,
        )
    refuse_to_overwrite(run.output, report.input_files)
    emit(report, as_json=run.json, output=run.output, table=trace_renderable)
