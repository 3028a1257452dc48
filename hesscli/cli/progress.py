"""Progress bars on stderr for the curvature commands (never on stdout)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from hesscli.cli.output import is_main_rank, stderr_console
from hesscli.diagnostics import Progress as Callback


@contextlib.contextmanager
def progress_bars() -> Iterator[Callback]:
    """A ``progress(description, done, total)`` callback drawing one bar per phase.

    ``total`` 0 means open-ended (runs until a target is met): the bar shows a count only.
    The bars disappear when the run ends, so stderr keeps only messages.
    """
    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console(),
        transient=True,
    )
    tasks: dict[str, int] = {}

    def update(description: str, done: int, total: int) -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=total or None)
        bars.update(tasks[description], completed=done, total=total or None)

    if not is_main_rank():
        yield _silent
        return
    with bars:
        yield update


def _silent(_description: str, _done: int, _total: int) -> None:
    return None
