"""``hesscli check``: thresholds and a baseline gate → exit code 1 when one fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hesscli.cli import estimation_options as est
from hesscli.cli.output import emit
from hesscli.cli.plan_and_plot import announce_plan
from hesscli.cli.progress import progress_bars
from hesscli.cli.render.check_tables import check_renderable
from hesscli.cli.run_options import RunOptions, report_settings, with_run_options
from hesscli.results import CheckResults
from hesscli.runs.check import Thresholds, run_check
from hesscli.runs.files import refuse_to_overwrite

_PANEL = "Thresholds"
#: Exit code of a run whose measurements violate a threshold or the baseline.
EXIT_FAILED = 1


def _limit(flag: str, what: str) -> Any:
    return typer.Option(
        flag,
        callback=est.finite_float,
        help=what,
        show_default=False,
        rich_help_panel=_PANEL,
    )


@with_run_options()
def check(
    run: RunOptions,
    max_eigenvalue: Annotated[
        float | None, _limit("--max-eigenvalue", "Fail when λmax exceeds this.")
    ] = None,
    min_eigenvalue: Annotated[
        float | None, _limit("--min-eigenvalue", "Fail when λmin is below this.")
    ] = None,
    max_trace: Annotated[
        float | None, _limit("--max-trace", "Fail when the trace exceeds this.")
    ] = None,
    max_layer_trace: Annotated[
        float | None, _limit("--max-layer-trace", "Fail when any layer's trace exceeds this.")
    ] = None,
    stability_lr: Annotated[
        float | None,
        typer.Option(
            "--stability-lr",
            callback=est.positive_float,
            help="Fail unless λmax < 2/LR (gradient descent with learning rate LR is stable).",
            show_default=False,
            rich_help_panel=_PANEL,
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            exists=True,
            dir_okay=False,
            help="A previous 'report --json' or 'check --json' output: fail when a measured "
            "number is worse than there by more than --tolerance.",
            show_default=False,
            rich_help_panel=_PANEL,
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            min=0.0,
            callback=est.number(at_least=0.0),
            help="Relative change allowed against the --baseline.",
            rich_help_panel=_PANEL,
        ),
    ] = 0.05,
    probes: est.Probes = None,
    steps: est.Steps = None,
    tol: est.ReportTol = None,
    max_steps: est.ReportMaxSteps = None,
    diag_products: est.DiagProducts = None,
) -> None:
    """Measure like 'report', then test thresholds and a baseline; exit code 1 when one fails.

    Every threshold is listed with the measured value, its margin and PASS/FAIL; a stochastic
    value is granted 1.96 standard errors of noise. At least one threshold or --baseline is
    required. Exit codes: 0 every check passed, 1 one failed, 2 bad usage or input.
    """
    named_inputs = run.named_inputs(baseline)
    refuse_to_overwrite(run.output, named_inputs)
    request = run.request(locals())
    thresholds = Thresholds(
        max_eigenvalue=max_eigenvalue,
        min_eigenvalue=min_eigenvalue,
        max_trace=max_trace,
        max_layer_trace=max_layer_trace,
        stability_lr=stability_lr,
    )
    settings = report_settings(locals())
    with progress_bars() as progress:
        report = run_check(
            request,
            layer_patterns=run.layers,
            thresholds=thresholds,
            baseline=baseline,
            tolerance=tolerance,
            settings=settings,
            progress=progress,
            announce=announce_plan,
        )
    refuse_to_overwrite(run.output, [*report.input_files, baseline])
    emit(report, as_json=run.json, output=run.output, table=check_renderable)
    results = report.results
    assert isinstance(results, CheckResults)
    if not results.passed:
        raise typer.Exit(EXIT_FAILED)
