"""Frozen result objects that every renderer reads (tables, JSON).

Field names are the JSON contract of DESIGN.md: a report serialises with
:func:`dataclasses.asdict` into ``{schema_version, command, inputs, settings, results, cost}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunInputs:
    """What a run read: files, sample count, parameter count, layers."""

    checkpoint: str
    model: str
    data: str
    loss: str
    samples: int
    parameters: int
    trainable_parameters: int
    layers: list[str]
    config: str | None


@dataclass(frozen=True)
class RunSettings:
    """How a run computed, and where each setting came from."""

    curvature: str
    device: str
    dtype: str
    seed: int | None
    micro_batch: int
    max_samples: int | None
    train_mode: bool
    sources: dict[str, str]
    #: The command's own options (top_k, tolerance, products budget, ...).
    options: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """What a run spent."""

    seconds: float
    hvps: int = 0
    data_passes: int = 0
    #: Extra single-micro-batch products spent checking the differentiation route.
    check_hvps: int = 0
    #: Products and vjps in a layer's output space (exact diagonals; far cheaper each).
    output_space_products: int = 0


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the model summary."""

    name: str
    type: str
    parameters: int
    trainable: int
    shapes: dict[str, list[int]]
    grad_norm: float | None


@dataclass(frozen=True)
class CheckpointInfo:
    """What the checkpoint held and how its keys matched the model."""

    path: str
    format: str
    size_bytes: int
    tensors: int
    container: str | None
    prefix: str
    ignored_entries: list[str]
    matched: int
    missing: list[str]
    unexpected: list[str]
    mismatched: list[dict[str, object]]
    tied: list[dict[str, str]]
    metadata: dict[str, object]
    pickled_module: bool


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of a data tensor (shape of the whole set)."""

    name: str
    shape: list[int]
    dtype: str


@dataclass(frozen=True)
class DataInfo:
    """The evaluation data."""

    source: str
    format: str
    samples: int
    available: int
    batches: int
    inputs: list[TensorInfo]
    targets: TensorInfo
    output_shape: list[int]


@dataclass(frozen=True)
class LossInfo:
    """The loss and why it was chosen."""

    name: str
    how: str


@dataclass(frozen=True)
class GradientInfo:
    """Loss and gradient at the checkpoint (one forward/backward pass)."""

    loss: float
    grad_norm: float
    micro_batches: int
    seconds: float


@dataclass(frozen=True)
class InfoResults:
    """Results of ``hesscli info``."""

    model_class: str
    layers: list[LayerInfo]
    checkpoint: CheckpointInfo
    data: DataInfo
    loss: LossInfo
    gradient: GradientInfo


@dataclass(frozen=True)
class ConvertResults:
    """Results of ``hesscli convert``: the file written and the defaults stored in it.

    ``not_stored`` names settings left out of the metadata, with the reason (code outside the
    output's folder, which readers would refuse to import).
    """

    source: str
    written: str
    tensors: int
    metadata: dict[str, object]
    not_stored: dict[str, str]


@dataclass(frozen=True)
class Engine:
    """How the curvature products were computed: the route and why it was chosen."""

    route: str
    reason: str


@dataclass(frozen=True)
class Eigenvalue:
    """One eigenvalue with its recomputed residual ‖Cy − λy‖ and whether it met the tolerance."""

    value: float
    residual: float
    converged: bool


@dataclass(frozen=True)
class Spectrum:
    """Extreme eigenvalues of one operator (the whole model or one layer's block).

    ``steps`` is the number of Lanczos steps; ``exact`` means the Krylov space became invariant,
    so the values are exact eigenvalues to round-off.
    """

    top: list[Eigenvalue]
    bottom: list[Eigenvalue]
    steps: int
    exact: bool
    parameters: int


@dataclass(frozen=True)
class SpectrumResults:
    """Results of ``hesscli spectrum``: the whole model's and (``--per-layer``) each layer's."""

    top: list[Eigenvalue]
    bottom: list[Eigenvalue]
    steps: int
    exact: bool
    tolerance: float
    layers: dict[str, Spectrum]
    engine: Engine


@dataclass(frozen=True)
class Trace:
    """A trace, its standard error and the 95 % interval half-width (0 and 0 when exact)."""

    value: float
    stderr: float
    exact: bool
    interval: float
    parameters: int


@dataclass(frozen=True)
class TraceResults:
    """Results of ``hesscli trace``: Tr(C) and every layer's Tr(C_ll), from the same probes.

    ``stopped`` says what ended the estimate: ``exact``, ``target`` (the standard error reached
    ``target`` × |trace|) or ``budget`` (``products`` spent).
    """

    trace: Trace
    layers: dict[str, Trace]
    method: str
    stopped: str
    probes: int
    sketch: int
    target: float | None
    budget: int | None
    engine: Engine


@dataclass(frozen=True)
class DiagonalEntry:
    """One diagonal entry: parameter name, index within that tensor, value."""

    parameter: str
    index: list[int]
    value: float


@dataclass(frozen=True)
class DiagonalSummary:
    """Statistics of one layer's diagonal, as in DESIGN.md, and how it was obtained.

    ``stderr`` is the root-mean-square standard error of the entries (0 when exact).
    """

    count: int
    mean: float
    std: float
    min: float
    max: float
    median: float
    p01: float
    p99: float
    fraction_negative: float
    sum: float
    exact: bool
    stderr: float
    method: str
    largest: list[DiagonalEntry]


@dataclass(frozen=True)
class DiagonalResults:
    """Results of ``hesscli diag``: one summary per layer."""

    layers: dict[str, DiagonalSummary]
    engine: Engine


@dataclass(frozen=True)
class Report:
    """The envelope every command returns."""

    command: str
    inputs: RunInputs
    settings: RunSettings
    results: InfoResults | ConvertResults | SpectrumResults | TraceResults | DiagonalResults
    cost: Cost
    schema_version: int = SCHEMA_VERSION
    hesscli_version: str = ""
    #: Every file the run read (not part of the JSON): outputs may never overwrite them.
    input_files: tuple[str, ...] = field(default=(), repr=False)
