"""``check`` and ``compare`` as Rich tables: thresholds with their margins, checkpoints in rows.

Both show the numbers of ``report``'s summary (a check's JSON is itself a baseline, a comparison
is one summary per checkpoint); only formatting happens here, every number comes from the
result objects and the rules themselves live in hesscli.runs.check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import PurePath

from rich.console import Group, RenderableType
from rich.text import Text

from hesscli.cli.render.cells import (
    eigenvalue_cell,
    flag_lines,
    mass_cell,
    not_converged_note,
    percent,
    plus_minus,
)
from hesscli.cli.render.common import footer, general, heading, short
from hesscli.cli.render.fit import Column, FitTable
from hesscli.results import CheckResults, CompareResults, Flag, Report

#: Display names of check quantities and relations (the JSON keeps the plain names).
QUANTITIES = {"lambda_max": "λmax", "lambda_min": "λmin", "top": "λmax", "bottom": "λmin"}
#: ``within``: a baseline row, whose limit is the baseline's value.
RELATIONS = {"<=": "≤", ">=": "≥", "within": "≈"}
#: What the check table's columns mean (the rules themselves live in hesscli.runs.check).
CHECK_LEGEND = (
    "margin: how far inside the limit (negative: past it); allowance: what the measurement "
    "cannot resolve (1.96 stderr of a trace, an eigenvalue's residual) or, in a baseline row "
    "(≈ the baseline's value), the change allowed (--tolerance plus both runs' noise); an "
    "unconverged eigenvalue fails"
)


# -- check -------------------------------------------------------------------------------------
def _signed(value: float) -> str:
    return f"{value:+.3g}" if math.isfinite(value) else general(value)


CHECK_COLUMNS = [
    Column("check", justify="left"),
    Column("quantity", "name", "left"),
    Column("limit"),
    Column("measured"),
    Column("allowance", drop=1),
    Column("margin"),
    Column("result"),
]


def check_renderable(report: Report) -> RenderableType:
    """One row per threshold with its margin and PASS/FAIL, then the verdict and baseline."""
    results = report.results
    assert isinstance(results, CheckResults)
    rows: list[list[str | Text]] = [
        [
            item.name,
            QUANTITIES.get(item.quantity, item.quantity)
            + (f" [{item.layer}]" if item.layer else ""),
            f"{RELATIONS.get(item.relation, item.relation)} {general(item.limit)}",
            plus_minus(item.measured, item.stderr, exact=not item.stderr),
            short(item.allowance) if item.allowance else "-",
            _signed(item.margin),
            Text("PASS", style="green") if item.passed else Text("FAIL", style="bold red"),
        ]
        for item in results.checks
    ]
    failed = [item for item in results.checks if not item.passed]
    verdict = (
        Text(f"passed: all {len(results.checks)} checks", style="bold green")
        if results.passed
        else Text(f"FAILED: {len(failed)} of {len(results.checks)} checks", style="bold red")
    )
    if results.baseline is None:
        baseline = Text("baseline: none")
    else:
        tolerance = (
            "" if results.tolerance is None else f" (tolerance {percent(results.tolerance)})"
        )
        baseline = Text(f"baseline: {results.baseline}{tolerance}")
    return Group(
        heading(report, "Check"),
        FitTable(CHECK_COLUMNS, rows, stack_single_row=False),
        verdict,
        baseline,
        flag_lines(results.flags),
        footer(report, results.engine, CHECK_LEGEND),
    )


# -- compare -----------------------------------------------------------------------------------
def short_names(paths: Sequence[str]) -> list[str]:
    """The fewest trailing path parts that tell the checkpoints apart (file names if unique)."""
    parts = [PurePath(p).parts or (p,) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _flag_names(flags: Sequence[Flag]) -> str:
    """Flag names grouped by subject: ``saddle, sharp; fc1: dominant``."""
    groups: dict[str, list[str]] = {}
    for flag in flags:
        groups.setdefault(flag.subject, []).append(flag.name)
    parts = [
        ", ".join(names) if subject == "model" else f"{subject}: {', '.join(names)}"
        for subject, names in groups.items()
    ]
    return "; ".join(parts) or "-"


COMPARE_COLUMNS = [
    Column("checkpoint", "name", "left"),
    Column("λmax"),
    Column("λmin"),
    Column("λmin/λmax", drop=2),
    Column("trace"),
    Column("sig. neg. mass", drop=3),
    Column("trace/param", drop=1),
    Column("flags", "text", "left"),
]


def compare_renderable(report: Report) -> RenderableType:
    """One row per checkpoint, in the order given: the report's summary and flags."""
    results = report.results
    assert isinstance(results, CompareResults)
    names = short_names([c.checkpoint for c in results.checkpoints])
    rows: list[list[str | Text]] = []
    for name, checkpoint in zip(names, results.checkpoints, strict=True):
        s = checkpoint.summary
        rows.append(
            [
                name,
                eigenvalue_cell(s.top),
                eigenvalue_cell(s.bottom),
                f"{s.ratio:.3g}",
                plus_minus(s.trace.value, s.trace.stderr, s.trace.exact),
                mass_cell(s.significant_negative_mass),
                short(s.trace_per_parameter),
                _flag_names(checkpoint.flags),
            ]
        )
    pairs = [p for c in results.checkpoints for p in (c.summary.top, c.summary.bottom)]
    note = (
        f"{not_converged_note(pairs)}trace ± stderr (no ±: exact); sig. neg. mass = fraction of "
        "eigenvalues below −1% of λmax; trace/param = trace per parameter; flags: the model's, "
        "then each layer's; every checkpoint's per-layer rows are in --json"
    )
    return Group(
        heading(report, "Comparison"),
        FitTable(COMPARE_COLUMNS, rows, separator="/", stack_single_row=False),
        footer(report, results.engine, note),
    )
