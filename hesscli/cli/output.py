"""The one output sink: the result to stdout (table or JSON), everything else to stderr."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console, RenderableType

from hesscli.cli.render.json_render import render_json
from hesscli.errors import ConfigError
from hesscli.results import Report


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
