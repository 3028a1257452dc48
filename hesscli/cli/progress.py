"""Progress bars on stderr for the curvature commands (never on stdout).

Bars are drawn only when stderr is a terminal: in a pipe, a file or a CI log they would be
nothing but noise (Rich's live display also leaves a blank line there when it stops). While the
bars are drawn, every line written to stderr — the ``plan:`` line, engine notes through the
``hesscli`` logger, warnings, what user code prints — goes above the bars instead of over them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import IO

from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from hesscli.cli.output import is_main_rank
from hesscli.runs.progress import Progress as Callback


class _AboveBars(FileProxy):
    """``sys.stderr`` while bars are drawn: each whole line is printed above the bars.

    Rich's own proxy tells every other ``Console(stderr=True)`` where the real stream is, and
    those consoles (the one printing the ``plan:`` line is one) then write straight to the
    terminal, over the bars. This proxy names itself instead, so they write through it too.
    """

    @property
    def rich_proxied_file(self) -> IO[str]:
        """This proxy itself, so that other consoles keep writing through it."""
        return self


def _bars(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        redirect_stderr=False,  # done by _AboveBars, which other consoles cannot see through
    )


@contextlib.contextmanager
def _stderr_above(console: Console) -> Iterator[None]:
    """Route ``sys.stderr`` and the ``hesscli`` log handlers through ``console`` meanwhile."""
    real = sys.stderr
    proxy = _AboveBars(console, real)
    handlers = [
        h
        for h in logging.getLogger("hesscli").handlers
        if isinstance(h, logging.StreamHandler) and h.stream in (real, sys.__stderr__)
    ]
    streams = [h.setStream(proxy) for h in handlers]
    sys.stderr = proxy
    try:
        yield
    finally:
        proxy.flush()
        if sys.stderr is proxy:
            sys.stderr = real
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)


def _draws(console: Console) -> bool:
    """Whether bars can be drawn: an interactive terminal, not a pipe, file or dumb terminal."""
    return console.is_terminal and not console.is_dumb_terminal


@contextlib.contextmanager
def progress_bars() -> Iterator[Callback]:
    """A ``progress(description, done, total)`` callback drawing one bar per phase.

    ``total`` 0 means open-ended (runs until a target is met): the bar shows a count only.
    The bars disappear when the run ends, so stderr keeps only messages. Without a terminal on
    stderr (and on ranks other than 0) the callback does nothing.
    """
    console = Console(file=sys.stderr)
    if not is_main_rank() or not _draws(console):
        yield _silent
        return
    bars = _bars(console)
    tasks: dict[str, int] = {}

    def update(description: str, done: int, total: int) -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=total or None)
        bars.update(tasks[description], completed=done, total=total or None)

    with _stderr_above(console), bars:
        yield update


def _silent(_description: str, _done: int, _total: int) -> None:
    return None
