"""The one output sink: the result to stdout (table or JSON), everything else to stderr.

While a command runs, whatever the user's code prints (a model file that prints at import, a
forward that prints, a C extension writing to file descriptor 1) goes to stderr: see
:func:`user_output_to_stderr`. Only :func:`emit` (through :func:`result_stream`) writes to the
real stdout, so ``hesscli ... --json | jq .`` always reads exactly one JSON document.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from rich.console import Console, RenderableType

from hesscli.cli.render.json_render import render_json
from hesscli.errors import ConfigError
from hesscli.results import Report


def is_main_rank() -> bool:
    """Whether this process prints: always, except ranks 1… of a torchrun launch."""
    return os.environ.get("RANK", "0") == "0"


def rank_label() -> str:
    """`` (rank N)`` on the ranks that do not print results, for their messages."""
    return "" if is_main_rank() else f" (rank {os.environ.get('RANK')})"


def configure_logging() -> None:
    """Engine notes (plans, retries, fallbacks) as ``hesscli: ...`` lines on stderr.

    Rank 0 shows notes and warnings; other ranks only warnings, so a launch of N processes
    prints its plan once.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"hesscli{rank_label()}: %(message)s"))
    logger = logging.getLogger("hesscli")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main_rank() else logging.WARNING)


#: Where results go while user output is diverted (``None``: plain ``sys.stdout``).
_RESULTS: list[TextIO] = []


def result_stream() -> TextIO:
    """The stream that carries the result: the real stdout, even while it is diverted.

    With stdout closed (``>&-``) the result goes nowhere, as a shell user asked.
    """
    if _RESULTS:
        return _RESULTS[-1]
    return sys.stdout if sys.stdout is not None else io.StringIO()


@contextlib.contextmanager
def user_output_to_stderr() -> Iterator[None]:
    """Send everything written to stdout during the block to stderr, except the result.

    Both levels are diverted, because user code can reach stdout at either:

    - ``sys.stdout`` is replaced by ``sys.stderr`` (``print`` in a model, a factory, a loss);
    - when stdout is a real file descriptor, that descriptor is pointed at stderr's (``dup2``)
      for the duration, which also catches ``sys.__stdout__``, ``os.write(1, ...)``, C and
      C++ extensions and child processes.

    Diverting the whole command rather than wrapping each call into user code is the robust
    choice: user code runs in many places hesscli does not own (imports, module hooks, every
    forward on every micro-batch inside torch transforms), and a wrapper missed anywhere would
    corrupt the JSON. :func:`result_stream` is a handle on the original stdout, used only to
    print the result.
    """
    real = sys.stdout if sys.stdout is not None else io.StringIO()  # None: stdout closed
    descriptor = _descriptor(real)
    target = _descriptor(sys.stderr)
    saved: int | None = None
    stream: TextIO = real
    if descriptor is not None and target is not None and descriptor != target:
        try:
            real.flush()
            saved = os.dup(descriptor)
        except (OSError, ValueError):  # stdout closed (``>&-``): divert at the Python level only
            saved = None
    if saved is not None:
        stream = open(  # noqa: SIM115 - closed in the finally below
            os.dup(saved),
            "w",
            encoding=getattr(real, "encoding", None) or "utf-8",
            errors=getattr(real, "errors", None) or "strict",
            closefd=True,
        )
        os.dup2(target, descriptor)  # type: ignore[arg-type]
    _RESULTS.append(stream)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _RESULTS.pop()
        with contextlib.suppress(OSError, ValueError):
            real.flush()  # what user code left in stdout's buffer goes to stderr too
        if saved is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
            stream.close()
            os.dup2(saved, descriptor)  # type: ignore[arg-type]
            os.close(saved)


def _descriptor(stream: object) -> int | None:
    """The file descriptor behind ``stream``, or ``None`` (a test runner's in-memory stream)."""
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def stderr_console() -> Console:
    """Console for progress, notes and warnings (never stdout)."""
    return Console(stderr=True)


def emit(
    report: Report,
    *,
    as_json: bool,
    output: Path | None,
    table: Callable[[Report], RenderableType],
) -> None:
    """Print ``report`` to stdout, and write it to ``output`` when given.

    Args:
        report: The result.
        as_json: Print one JSON document instead of tables.
        output: Extra file to write: JSON when ``as_json`` or it ends in ``.json``, else text.
        table: Builds the Rich renderable for table mode.
    """
    if not is_main_rank():  # every rank holds the same result; rank 0 prints it
        return
    if output is not None:  # first: a file that cannot be written fails before stdout is used
        if as_json or output.suffix.lower() == ".json":
            text = render_json(report) + "\n"
        else:
            buffer = io.StringIO()
            Console(file=buffer, width=120, no_color=True, color_system=None).print(table(report))
            text = buffer.getvalue()
        write_text_file(output, text, option="--output")
    stream = result_stream()
    if as_json:
        stream.write(render_json(report) + "\n")
    else:
        result_console().print(table(report))
    stream.flush()


def result_console() -> Console:
    """A Rich console on the result stream, as wide as the terminal stdout really is.

    Rich measures the terminal on file descriptors 0-2; while stdout is diverted, descriptor 1
    is stderr's, so the width of the saved stdout is measured here (``COLUMNS`` still wins).
    """
    stream = result_stream()
    width = None
    if "COLUMNS" not in os.environ and (descriptor := _descriptor(stream)) is not None:
        try:
            width = os.get_terminal_size(descriptor).columns
        except OSError:
            width = None
    return Console(file=stream, width=width)


def write_json_document(document: str) -> None:
    """Print one JSON document on the result stream (commands without a :class:`Report`)."""
    stream = result_stream()
    stream.write(document + "\n")
    stream.flush()


def write_text_file(path: Path, text: str, *, option: str) -> None:
    """Write ``text`` to ``path``; a failure is a one-line error naming ``option``."""
    try:
        path.expanduser().write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write {option} {path}: {exc.strerror}", "check the path"
        ) from exc
