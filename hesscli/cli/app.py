"""The ``hesscli`` application and its error boundary.

Every user error becomes one line on stderr and exit code 2; results go to stdout only.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

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
from hesscli.cli.output import configure_logging, rank_label
from hesscli.engine.distributed import leave
from hesscli.engine.memory import is_out_of_memory
from hesscli.errors import HesscliError

#: Exit codes: 0 success, 1 a ``check`` threshold failed (curvature commands), 2 bad usage/input.
EXIT_OK, EXIT_USAGE = 0, 2


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"hesscli{rank_label()}: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


class HesscliGroup(TyperGroup):
    """Typer group whose ``main`` is the one error boundary of the command line."""

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
            _fail(f"{exc.format_message()}{hint}", exc.exit_code)
        except typer.Abort:
            _fail("aborted", 130)
        except HesscliError as exc:
            _fail(exc.one_line(), exc.exit_code)
        except (RuntimeError, MemoryError) as exc:  # outside the products, which retry smaller
            if not is_out_of_memory(exc):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _fail(
                f"out of memory ({first[:200]}); lower --max-memory or --micro-batch, select "
                "fewer layers (--layer), or run on more processes (torchrun)"
            )
        leave()  # every rank got here: leave the process group together
        sys.exit(code if isinstance(code, int) else EXIT_OK)


app = typer.Typer(
    cls=HesscliGroup,
    name="hesscli",
    help="Hessian diagnostics for trained PyTorch checkpoints.\n\n"
    "Results go to stdout (tables, or one JSON document with --json); progress and messages "
    "go to stderr. Exit codes: 0 success, 1 a check failed, 2 bad usage or bad input.",
    invoke_without_command=True,
    add_completion=False,
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


app.command()(spectrum)
app.command()(trace)
app.command()(diag)
app.command()(density)
app.command()(report)
app.command()(check)
app.command()(compare)
app.command()(info)
app.command()(convert)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    typer.main.get_command(app).main(args=argv, prog_name="hesscli")
