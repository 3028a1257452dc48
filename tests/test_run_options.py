"""The shared options are spliced into a command where its ``run`` parameter stands."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

from hesscli.cli.run_options import SHARED, RunOptions, report_settings, with_run_options
from hesscli.runs.report import ReportSettings

Own = Annotated[int, typer.Option("--own")]


def _app(leave_out: tuple[str, ...] = ()) -> tuple[typer.Typer, list[Any]]:
    seen: list[Any] = []
    app = typer.Typer()

    @app.command()
    @with_run_options(leave_out=leave_out)
    def command(first: Annotated[str, typer.Argument()], run: RunOptions, own: Own = 1) -> None:
        """The command's own docstring."""
        seen.append((first, run, own))

    return app, seen


def test_shared_options_take_the_place_of_run_in_order() -> None:
    app, _ = _app(leave_out=("checkpoint",))
    names = list(inspect.signature(app.registered_commands[0].callback).parameters)
    assert names == ["first", *[n for n in SHARED if n != "checkpoint"], "own"]


def test_values_reach_the_command_as_run_options() -> None:
    app, seen = _app(leave_out=("checkpoint",))
    result = CliRunner().invoke(
        app, ["x", "--seed", "3", "--layer", "a", "--layer", "b", "--json", "--own", "7"]
    )
    assert result.exit_code == 0, result.output
    ((first, run, own),) = seen
    assert (first, own) == ("x", 7)
    assert run.values["seed"] == 3
    assert run.layers == ["a", "b"]
    assert run.json is True
    assert "checkpoint" not in run.values
    assert run.named_inputs("extra") == [None, None, None, None, "extra"]


def test_help_keeps_the_docstring_and_lists_the_shared_options() -> None:
    app, _ = _app()
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "The command's own docstring." in result.output
    assert "--max-memory" in result.output and "--own" in result.output


def test_a_misnamed_leave_out_or_a_missing_run_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not shared options: seeds"):
        with_run_options(leave_out=("seeds",))
    with pytest.raises(TypeError, match="has no 'run' parameter"):
        with_run_options()(lambda own=1: own)


def test_report_settings_take_what_the_command_declares() -> None:
    settings = report_settings({"probes": 3, "tol": 0.1, "baseline": "b.json", "run": None})
    assert settings == ReportSettings(probes=3, tol=0.1)
