"""How runs report progress and announce their plan, without printing.

The orchestration never writes to a terminal: it calls ``progress(description, done, total)``
and ``announce(plan)``, and the CLI turns those into progress bars and log lines on stderr.
:func:`planned` adds the one-line plan of a long loop, once its second pass is timed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hesscli.engine.device_memory import format_size
from hesscli.engine.operator import CurvatureOperator
from hesscli.results import Plan

log = logging.getLogger("hesscli")
#: ``progress(description, done, total)``: a step of a long loop is done.
Progress = Callable[[str, int, int], None]

#: ``announce(plan)``: what ``report`` will spend, once its first pass is timed.
Announce = Callable[[Plan], None]
#: A loop predicted to take longer than this many seconds announces its plan.
LONG_RUN_SECONDS = 10.0


def quiet(_description: str, _done: int, _total: int) -> None:
    """A progress callback that reports nothing (the default of library calls)."""
    return None


def silent(_plan: Plan) -> None:
    """An announce callback that announces nothing (the default of library calls)."""
    return None


def planned(
    op: CurvatureOperator, progress: Progress, description: str, passes: int, columns: int
) -> Callable[[int, int], None]:
    """A step callback that announces the plan of a long loop once its second pass is timed.

    The first pass also checks the differentiation route, so the second one gives the time
    per pass; a loop predicted to run longer than :data:`LONG_RUN_SECONDS` says so on stderr
    (logger ``hesscli``) before it goes on.
    """
    seen: list[float] = []

    def step(done: int, total: int) -> None:
        seen.append(op.counters.seconds)
        if len(seen) == 2:
            per_pass = seen[1] - seen[0]
            if (passes - 2) * per_pass > LONG_RUN_SECONDS:
                log.info(
                    "plan: %s, at most %d data passes (%d products), ≈%.0f s more at %.2f s "
                    "per pass, %s",
                    description,
                    passes,
                    passes * columns,
                    (passes - 2) * per_pass,
                    per_pass,
                    planned_bytes(op),
                )
        progress(description, done, total)

    return step


def planned_bytes(op: CurvatureOperator) -> str:
    """``≈2.1 GiB for the products, up to 0.5 GiB more for the algorithm's vectors (8 GiB …)``.

    The products' peak is a prediction; the algorithm's share is a bound, said as one: a
    Lanczos basis grows with its steps, which a run that converges early never takes.
    """
    if op.memory is None:
        return "memory not planned"
    text = f"≈{format_size(op.memory.estimate)} for the products"
    if op.memory.reserve:
        text += f", up to {format_size(op.memory.reserve)} more for the algorithm's vectors"
    return f"{text} ({format_size(op.memory.budget)} budget)"
