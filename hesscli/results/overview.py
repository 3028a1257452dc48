"""Results of ``report``, ``check`` and ``compare``: per-layer summaries, flags and checks.

They combine the curvature estimates of hesscli.results.curvature into one row per layer and a
model summary, so that ``check`` and ``compare`` can reuse ``report``'s shapes (a check's JSON is
itself a baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from hesscli.results.curvature import Density, DiagonalSummary, Eigenvalue, Engine, Mass, Trace
from hesscli.results.run import Cost


@dataclass(frozen=True)
class Flag:
    """An interpretive flag (see :mod:`hesscli.runs.flags`): its name, what it marks, and why."""

    name: str
    subject: str
    message: str


@dataclass(frozen=True)
class LayerSummary:
    """One row of ``report``: a layer's trace, extreme eigenvalues of its block, diagonal."""

    parameters: int
    trace: Trace
    top: Eigenvalue
    bottom: Eigenvalue
    diagonal: DiagonalSummary
    flags: list[str]


@dataclass(frozen=True)
class Summary:
    """The model-level numbers of ``report`` (over the selected layers).

    ``ratio`` is λmin/λmax; ``trace_per_parameter`` is Tr(C)/P with its standard error.
    """

    top: Eigenvalue
    bottom: Eigenvalue
    trace: Trace
    ratio: float
    negative_mass: Mass
    significant_negative_mass: Mass
    trace_per_parameter: float
    trace_per_parameter_stderr: float


@dataclass(frozen=True)
class Plan:
    """What a run was going to cost, announced before it started (the time is an estimate)."""

    data_passes: int
    products: int
    seconds: float
    pass_seconds: float
    #: Memory the run plans to hold at most: the products' peak and the algorithm's vectors.
    bytes: int = 0


@dataclass(frozen=True)
class ReportResults:
    """Results of ``hesscli report``: everything, one row per layer, from shared data passes."""

    summary: Summary
    layers: dict[str, LayerSummary]
    density: Density
    flags: list[Flag]
    plan: Plan
    engine: Engine


@dataclass(frozen=True)
class CheckItem:
    """One threshold of ``hesscli check``.

    ``margin`` is how far the measured value is inside the limit (negative: past it), in the
    quantity's own units; ``allowance`` is the noise a stochastic value is granted (1.96 × its
    standard error, 0 when exact), already included in ``passed``.
    """

    name: str
    quantity: str
    layer: str | None
    relation: str
    limit: float
    measured: float
    stderr: float
    allowance: float
    margin: float
    passed: bool


@dataclass(frozen=True)
class CheckResults:
    """Results of ``hesscli check``: every threshold, pass/fail, and the numbers measured.

    They are the same ``summary`` and ``layers`` as ``report``'s, so a check's JSON is itself
    a baseline.
    """

    passed: bool
    checks: list[CheckItem]
    baseline: str | None
    tolerance: float | None
    summary: Summary
    layers: dict[str, LayerSummary]
    flags: list[Flag]
    engine: Engine


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of ``hesscli compare``: its summary, layers, flags and cost."""

    checkpoint: str
    summary: Summary
    layers: dict[str, LayerSummary]
    flags: list[Flag]
    cost: Cost


@dataclass(frozen=True)
class CompareResults:
    """Results of ``hesscli compare``: the same quantities for each checkpoint, in order."""

    checkpoints: list[Checkpoint]
    engine: Engine
