"""The ``hesscli`` application and its error boundary.

Every user error becomes one line on stderr and exit code 2; results go to stdout only:

- typed errors (:class:`~hesscli.errors.HesscliError`) print their ``problem; fix`` line;
- an exception raised in the user's own code (a forward, a custom loss, ``sys.exit`` in a
  model) prints what raised it, the stage and the micro-batch (:mod:`hesscli.cli.failures`);
- anything else is a hesscli bug and keeps its traceback;
- while a command runs, whatever user code prints goes to stderr
  (:func:`~hesscli.cli.output.user_output_to_stderr`);
- under a launcher (torchrun), a process stopped because a peer failed says so in one line.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from hesscli import __version__
from hesscli.cli.commands.check import check
from hesscli.cli.commands.compare import compare
from hesscli.cli.commands.convert import convert
from hesscli.cli.commands.density import density
from hesscli.cli.commands.diag import diag
from hesscli.cli.commands.info import info
from hesscli.cli.commands.report import report
from hesscli.cli.commands.spectrum import spectrum
from hesscli.cli.commands.trace import trace
from hesscli.cli.failures import user_code_failure
from hesscli.cli.output import configure_logging, rank_label, user_output_to_stderr
from hesscli.errors import HesscliError
from hesscli.runs.session import float32_precision, is_out_of_memory, launched, leave

#: Exit codes: 0 success, 1 a ``check`` threshold failed (curvature commands), 2 bad usage/input.
EXIT_OK, EXIT_USAGE = 0, 2

#: Set once this process has printed its error line (a later SIGTERM then adds nothing).
_REPORTED: list[bool] = []


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    _REPORTED.append(True)
    typer.echo(f"hesscli{rank_label()}: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _stopped_by_launcher(signum: int, frame: FrameType | None) -> None:
    """SIGTERM under a launcher: torchrun stops every process as soon as one has failed.

    One line, then exit 2 at once (``os._exit``): the peers are gone, so waiting for a
    collective or a clean teardown could only hang.
    """
    del frame
    if not _REPORTED:
        line = (
            f"hesscli{rank_label()}: error: stopped by the launcher "
            f"({signal.Signals(signum).name}): another process of this launch failed; see its "
            "message, fix that and relaunch\n"
        )
        os.write(2, line.encode("utf-8", "replace"))
    os._exit(EXIT_USAGE)


def _unexpected(exc: BaseException) -> str:
    """The line for an exception that is not a typed user error; re-raises a hesscli bug.

    Out of memory outside the products (which retry smaller by themselves) and failures of
    the user's own code are user errors; anything else keeps its traceback.
    """
    if isinstance(exc, RuntimeError | MemoryError) and is_out_of_memory(exc):
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return (
            f"out of memory ({first[:200]}); lower --max-memory or --micro-batch, select "
            "fewer layers (--layer), or run on more processes (torchrun)"
        )
    message = user_code_failure(exc)
    if message is None:
        raise exc
    return message


def _flags_without_type(params: list[Any]) -> list[Any]:
    """Flags take no value: help shows no ``<bool>`` type for them (``--json``, ``--help``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class HesscliCommand(TyperCommand):
    """A command whose run (after its options are parsed) keeps stdout for the result."""

    def get_params(self, ctx: typer.Context) -> list[Any]:  # type: ignore[override]
        """The command's parameters, flags shown without a value type in help."""
        return _flags_without_type(super().get_params(ctx))

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        """Run the command with user code's output sent to stderr, in true float32.

        The engine sets the precision of every computation itself (``--allow-tf32`` there);
        this outer setting covers what runs besides it (the loading checks' forward passes).
        """
        with user_output_to_stderr(), float32_precision():
            return super().invoke(ctx)


class HesscliGroup(TyperGroup):
    """Typer group whose ``main`` is the one error boundary of the command line."""

    def get_params(self, ctx: typer.Context) -> list[Any]:  # type: ignore[override]
        """The group's parameters, flags shown without a value type in help."""
        return _flags_without_type(super().get_params(ctx))

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run a command; map user errors to one stderr line and exit code 2."""
        del standalone_mode  # errors are always handled here
        configure_logging()
        if launched():
            signal.signal(signal.SIGTERM, _stopped_by_launcher)
        try:
            code = super().main(
                args=args,
                prog_name=prog_name or "hesscli",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except typer.TyperException as exc:  # typer's usage and parameter errors
            ctx = getattr(exc, "ctx", None)
            hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
            message = exc.format_message().replace("Value error, ", "").rstrip(".")
            _fail(f"{message}{hint}", exc.exit_code)
        except typer.Abort:
            _fail("aborted", 130)
        except HesscliError as exc:
            _fail(exc.one_line(), exc.exit_code)
        except (Exception, SystemExit) as exc:  # out of memory, the user's code, or a bug
            _fail(_unexpected(exc))
        try:
            leave()  # every rank got here: leave the process group together
        except HesscliError as exc:
            _fail(exc.one_line(), exc.exit_code)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


app = typer.Typer(
    cls=HesscliGroup,
    name="hesscli",
    help="Hessian diagnostics for trained PyTorch checkpoints.\n\n"
    "Results go to stdout (tables, or one JSON document with --json); progress and messages "
    "go to stderr. Exit codes: 0 success, 1 a check failed, 2 bad usage or bad input.",
    invoke_without_command=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hesscli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Hessian diagnostics for trained PyTorch checkpoints."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


app.command(cls=HesscliCommand)(spectrum)
app.command(cls=HesscliCommand)(trace)
app.command(cls=HesscliCommand)(diag)
app.command(cls=HesscliCommand)(density)
app.command(cls=HesscliCommand)(report)
app.command(cls=HesscliCommand)(check)
app.command(cls=HesscliCommand)(compare)
app.command(cls=HesscliCommand)(info)
app.command(cls=HesscliCommand)(convert)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    typer.main.get_command(app).main(args=argv, prog_name="hesscli")
