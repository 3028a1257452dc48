"""What ``density``, ``report``, ``check`` and ``compare`` share: the plan line and ``--plot``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import typer

from hesscli.cli.output import is_main_rank, stderr_console
from hesscli.cli.render.plots import PlotUnavailable, supported_formats
from hesscli.cli.render.report_tables import plan_line
from hesscli.errors import ConfigError
from hesscli.results import Plan, Report
from hesscli.runs.files import check_outputs_differ, refuse_to_overwrite

NO_MATPLOTLIB = (
    "hesscli: note: --plot needs matplotlib; install it with pip install 'hesscli[plot]'"
)


def announce_plan(plan: Plan) -> None:
    """Say on stderr what the run is about to cost, before its long part starts."""
    stderr_console().print(plan_line(plan), markup=False, highlight=False, soft_wrap=True)


def announce_first_plan(checkpoints: int) -> Callable[[Plan], None]:
    """``compare`` plans each checkpoint alike: announce the first one, once."""
    said: list[Plan] = []

    def announce(plan: Plan) -> None:
        if not said:
            said.append(plan)
            line = f"{plan_line(plan)}, per checkpoint ({checkpoints} checkpoints)"
            stderr_console().print(line, markup=False, highlight=False, soft_wrap=True)

    return announce


def check_plot_target(
    plot: Path | None, inputs: Iterable[str | Path | None], output: Path | None = None
) -> None:
    """Refuse a ``--plot`` file that is an input, a directory, ``--output``, or unwritable.

    Called before the run (with the named inputs) and again before printing (with every file
    the run read), like ``--output``.
    """
    if plot is None:
        return
    refuse_to_overwrite(plot, inputs, option="--plot")
    check_outputs_differ(output, plot)
    formats = supported_formats()
    suffix = plot.expanduser().suffix.lower().removeprefix(".")
    if formats is not None and suffix and suffix not in formats:
        raise ConfigError(
            f"--plot {plot}: matplotlib cannot write .{suffix} files",
            f"use one of .{', .'.join(sorted(formats))}",
        )


def write_plot(draw: Callable[[Report, Path], None], report: Report, plot: Path | None) -> None:
    """Draw ``report`` to ``plot`` (before the result is printed); no matplotlib is a note.

    Drawn first so that a plot that cannot be written fails the run before stdout carries a
    result. Without matplotlib the run still succeeds: one note on stderr says how to get plots.
    """
    if plot is None or not is_main_rank():
        return
    try:
        draw(report, plot.expanduser())
    except PlotUnavailable:
        typer.echo(NO_MATPLOTLIB, err=True)
        return
    except OSError as exc:
        raise ConfigError(f"cannot write --plot {plot}: {exc.strerror}", "check the path") from exc
    typer.echo(f"wrote plot {plot}", err=True)
