"""The envelope every command returns: ``{schema_version, command, inputs, settings, ...}``.

It serialises with :func:`dataclasses.asdict`; ``results`` is one of the per-command result
classes, which is why this module imports them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hesscli.results.curvature import DensityResults, DiagonalResults, SpectrumResults, TraceResults
from hesscli.results.info import ConvertResults, InfoResults
from hesscli.results.overview import CheckResults, CompareResults, ReportResults
from hesscli.results.run import Cost, RunInputs, RunSettings

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Report:
    """The envelope every command returns."""

    command: str
    inputs: RunInputs
    settings: RunSettings
    results: (
        InfoResults
        | ConvertResults
        | SpectrumResults
        | TraceResults
        | DiagonalResults
        | DensityResults
        | ReportResults
        | CheckResults
        | CompareResults
    )
    cost: Cost
    schema_version: int = SCHEMA_VERSION
    hesscli_version: str = ""
    #: Every file the run read (not part of the JSON): outputs may never overwrite them.
    input_files: tuple[str, ...] = field(default=(), repr=False)
