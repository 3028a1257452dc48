"""``hesscli compare``: the report's summary, layers and flags for several checkpoints.

Each checkpoint of one model is measured like ``report`` measures one (:func:`measure`), in
the order given, so a training run's curvature can be read as a trajectory.
"""

from __future__ import annotations

import time
from dataclasses import replace

from hesscli.errors import ConfigError
from hesscli.results import Checkpoint, CompareResults, Cost, Report
from hesscli.runs.envelope import report_for
from hesscli.runs.prepare import Prepared, Request, prepare
from hesscli.runs.progress import Announce, Progress, quiet, silent
from hesscli.runs.report import (
    DEFAULTS,
    ReportSettings,
    check_report_settings,
    measure,
    report_options,
)


def run_compare(
    request: Request,
    *,
    checkpoints: list[str],
    layer_patterns: list[str],
    settings: ReportSettings = DEFAULTS,
    progress: Progress = quiet,
    announce: Announce = silent,
) -> Report:
    """The report's summary, layers and flags for each checkpoint of one model, in order."""
    if len(checkpoints) < 2:
        raise ConfigError(
            f"compare needs at least two checkpoints, got {len(checkpoints)}",
            "pass two or more checkpoint files (or use report for one)",
        )
    check_report_settings(settings)
    start = time.perf_counter()
    entries: list[Checkpoint] = []
    first: Prepared | None = None
    files: list[str] = []
    for path in checkpoints:
        options = {**request.options, "checkpoint": path}
        prepared = prepare(replace(request, options=options), layer_patterns=layer_patterns)
        first = first or prepared
        found, cost = measure(prepared, settings, progress=progress, announce=announce)
        entries.append(
            Checkpoint(
                checkpoint=str(prepared.problem.checkpoint.path),
                summary=found.summary,
                layers=found.layers,
                flags=found.flags,
                cost=cost,
            )
        )
        files.append(str(prepared.problem.checkpoint.path))
    assert first is not None
    total = Cost(
        seconds=time.perf_counter() - start,
        hvps=sum(e.cost.hvps for e in entries),
        data_passes=sum(e.cost.data_passes for e in entries),
        check_hvps=sum(e.cost.check_hvps for e in entries),
        output_space_products=sum(e.cost.output_space_products for e in entries),
    )
    results = CompareResults(checkpoints=entries, engine=found.engine)
    report = report_for("compare", first, results, total, report_options(settings))
    return replace(report, input_files=tuple({*report.input_files, *files}))
