"""The one output sink: the result to stdout (table or JSON), everything else to stderr."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

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
    if as_json:
        sys.stdout.write(render_json(report) + "\n")
        sys.stdout.flush()
    else:
        Console(file=sys.stdout).print(table(report))
    if output is None:
        return
    if as_json or output.suffix.lower() == ".json":
        text = render_json(report) + "\n"
    else:
        buffer = io.StringIO()
        Console(file=buffer, width=120, no_color=True, color_system=None).print(table(report))
        text = buffer.getvalue()
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write --output {output}: {exc.strerror}", "check the path"
        ) from exc
