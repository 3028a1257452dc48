"""``hesscli convert``: write a self-describing ``.safetensors`` copy of a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from hesscli.cli import options as opt
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit, stderr_console
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


def convert(
    checkpoint: opt.Checkpoint = None,
    output: Destination = ...,  # type: ignore[assignment]
    model: opt.Model = None,
    model_kwargs: opt.ModelKwargs = None,
    data: opt.Data = None,
    text_field: TextField = None,
    label_field: LabelField = None,
    max_length: MaxLength = None,
    loss: opt.Loss = None,
    output_key: opt.OutputKey = None,
    trust_pickle: opt.TrustPickle = False,
    strict: opt.Strict = None,
    checkpoint_prefix: opt.CheckpointPrefix = None,
    config: opt.Config = None,
    no_config: opt.NoConfig = False,
    json: opt.Json = False,
) -> None:
    """Write CHECKPOINT as a .safetensors that remembers its model, data and loss.

    Afterwards 'hesscli info OUTPUT' needs no other option. The model, data and loss are
    loaded and checked first; paths are stored relative to OUTPUT's folder. CHECKPOINT itself
    is never modified.
    """
    refuse_to_overwrite(output, [checkpoint, data, model, config])
    report = run_convert(opt.request_from(locals()), output=output)
    emit(report, as_json=json, output=None, table=_summary)
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
