"""``hesscli convert``: write a self-describing ``.safetensors`` copy of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from hesscli.cli.output import emit, stderr_console
from hesscli.cli.run_options import RUN_ONLY, RunOptions, with_run_options
from hesscli.results import ConvertResults, Report
from hesscli.runs.convert import run_convert
from hesscli.runs.files import refuse_to_overwrite

Destination = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        help="The .safetensors file to write (never one of the inputs).",
        show_default=False,
    ),
]


@with_run_options(leave_out=(*RUN_ONLY, "output"))
def convert(
    run: RunOptions,
    output: Destination = ...,  # type: ignore[assignment]
) -> None:
    """Write CHECKPOINT as a .safetensors that remembers its model, data and loss.

    Afterwards 'hesscli info OUTPUT' needs no other option. The model, data and loss are
    loaded and checked first; paths are stored relative to OUTPUT's folder. CHECKPOINT itself
    is never modified.
    """
    refuse_to_overwrite(output, run.named_inputs())
    report = run_convert(run.request(locals()), output=output)
    emit(report, as_json=run.json, output=None, table=_summary)
    results = report.results
    assert isinstance(results, ConvertResults)
    for key, reason in results.not_stored.items():
        stderr_console().print(f"note: {key} not stored: {reason}", soft_wrap=True)


def _summary(report: Report) -> Text:
    """The two lines of the table mode: what was written, and the defaults stored."""
    results = report.results
    assert isinstance(results, ConvertResults)
    stored = ", ".join(f"{k}={v}" for k, v in sorted(results.metadata.items()))
    return Text(
        f"wrote {results.written} ({results.tensors} tensors) from {results.source}\n"
        f"stored defaults: {stored}",
        no_wrap=True,
        overflow="ignore",
    )
