"""Frozen result objects that every renderer reads (tables, JSON).

Field names are the JSON contract of DESIGN.md: a report serialises with
:func:`dataclasses.asdict` into ``{schema_version, command, inputs, settings, results, cost}``.
The classes live in modules by subject (:mod:`~hesscli.results.run` for inputs, settings and
cost, :mod:`~hesscli.results.info`, :mod:`~hesscli.results.curvature`,
:mod:`~hesscli.results.overview`, and the :mod:`~hesscli.results.envelope`); every public name
is re-exported here, since this package is the one contract every layer reads.
"""

from __future__ import annotations

from hesscli.results.curvature import (
    Density,
    DensityResults,
    DiagonalEntry,
    DiagonalResults,
    DiagonalSummary,
    Eigenvalue,
    Engine,
    Mass,
    Spectrum,
    SpectrumResults,
    Trace,
    TraceResults,
)
from hesscli.results.envelope import SCHEMA_VERSION, Report
from hesscli.results.info import (
    CheckpointInfo,
    ConvertResults,
    DataInfo,
    GradientInfo,
    InfoResults,
    LayerInfo,
    LossInfo,
    TensorInfo,
)
from hesscli.results.overview import (
    CheckItem,
    Checkpoint,
    CheckResults,
    CompareResults,
    Flag,
    LayerSummary,
    Plan,
    ReportResults,
    Summary,
)
from hesscli.results.run import (
    Cost,
    MemoryUse,
    Normalisation,
    Parallelism,
    Precision,
    RunInputs,
    RunSettings,
)

__all__ = [
    "SCHEMA_VERSION",
    "CheckItem",
    "CheckResults",
    "Checkpoint",
    "CheckpointInfo",
    "CompareResults",
    "ConvertResults",
    "Cost",
    "DataInfo",
    "Density",
    "DensityResults",
    "DiagonalEntry",
    "DiagonalResults",
    "DiagonalSummary",
    "Eigenvalue",
    "Engine",
    "Flag",
    "GradientInfo",
    "InfoResults",
    "LayerInfo",
    "LayerSummary",
    "LossInfo",
    "Mass",
    "MemoryUse",
    "Normalisation",
    "Parallelism",
    "Plan",
    "Precision",
    "Report",
    "ReportResults",
    "RunInputs",
    "RunSettings",
    "Spectrum",
    "SpectrumResults",
    "Summary",
    "TensorInfo",
    "Trace",
    "TraceResults",
]
