"""How an estimate reads in a table cell of ``density``, ``report``, ``check`` and ``compare``.

These tables show the same kinds of numbers: values with their standard errors, traces that
may be exact, fractions of eigenvalues as percentages, eigenvalues starred when they missed
their tolerance, and flags. Formatting them in one place keeps every table worded alike; the
plain number formats (4 or 3 significant digits) are those of :mod:`hesscli.cli.render.common`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from hesscli.cli.render.common import general
from hesscli.results import Eigenvalue, Flag, Mass, Trace

#: The mark of an eigenvalue that did not meet its tolerance.
NOT_CONVERGED = "*"


def plus_minus(value: float, stderr: float, exact: bool = False) -> str:
    """``value ± stderr``, or the value alone when it is exact (``± n/a``: no spread known)."""
    if exact:
        return general(value)
    spread = f"{stderr:.2g}" if math.isfinite(stderr) else "n/a"
    return f"{general(value)} ± {spread}"


def trace_cell(trace: Trace) -> str:
    """A trace with its standard error, or marked ``(exact)``."""
    return plus_minus(trace.value, trace.stderr, trace.exact) + (" (exact)" if trace.exact else "")


def percent(fraction: float, digits: int = 3) -> str:
    """A fraction as a percentage with ``digits`` significant digits (``0.0517`` → ``5.17%``)."""
    return f"{fraction * 100:.{digits}g}%" if math.isfinite(fraction) else "n/a"


def mass_cell(mass: Mass) -> str:
    """A fraction of the eigenvalues as a percentage, with its standard error."""
    return f"{percent(mass.value)} ± {percent(mass.stderr, 2)}"


def eigenvalue_cell(pair: Eigenvalue) -> str:
    """An eigenvalue, starred when it did not meet its tolerance."""
    return general(pair.value) + ("" if pair.converged else NOT_CONVERGED)


def not_converged_note(pairs: Sequence[Eigenvalue]) -> str:
    """The legend of :data:`NOT_CONVERGED`, when some value of ``pairs`` carries it."""
    if all(p.converged for p in pairs):
        return ""
    return f"{NOT_CONVERGED} not converged (residual in --json); "


def flag_lines(flags: Sequence[Flag]) -> Text:
    """Every flag (the model's and the layers'), one per line with its subject and reason."""
    text = Text("flags:" if flags else "flags: none")
    for flag in flags:
        text.append("\n  ")
        text.append(flag.name, style="bold yellow")
        text.append(f" [{flag.subject}]: {flag.message}")
    return text
