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
class Normalisation:
    """What the loss is a mean over, so that micro-batches and ranks are weighted by it.

    Attributes:
        kind: ``samples``, or ``tokens`` (targets other than -100).
        units: Units over the whole data set (every rank).
        samples: Samples (sequences) over the whole data set.
        description: The same in words.
        reason: Why this unit (``auto: ...`` or ``as requested``).
    """

    kind: str
    units: int
    samples: int
    description: str
    reason: str


@dataclass(frozen=True)
class Parallelism:
    """How the data was spread over processes (torch.distributed)."""

    world_size: int
    backend: str
    samples_per_rank: list[int]


@dataclass(frozen=True)
class Precision:
    """The arithmetic a run computed with (``settings.precision``).

    Attributes:
        allow_tf32: Whether TF32 was allowed (``--allow-tf32`` or the ``allow_tf32`` setting).
        tf32: Whether TF32 could change the numbers: allowed, float32, on a CUDA device.
            ``false`` means true float32 (or float64) arithmetic.
        float32_matmul_precision: ``highest`` (true float32) or ``high`` (TF32 allowed), as
            set while hesscli computed (the caller's setting is restored afterwards).
    """

    allow_tf32: bool
    tf32: bool
    float32_matmul_precision: str


@dataclass(frozen=True)
class MemoryUse:
    """The memory plan the products ran under (rank 0's, with several ranks).

    Attributes:
        budget: Bytes the run could use.
        source: ``--max-memory`` or ``automatic: ...``.
        estimate: Predicted peak bytes of one product pass.
        sample_bytes: Bytes autograd saves per sample (measured on the first micro-batch).
        reserve: Bytes the algorithm keeps besides the products (Lanczos vectors, probes,
            sketches, diagonals), within the budget.
    """

    budget: int
    source: str
    estimate: int
    sample_bytes: int
    reserve: int = 0


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
    normalisation: Normalisation | None = None
    #: Product columns per vmap call (the memory plan's, or after an out-of-memory retry).
    chunk_size: int | None = None
    memory: MemoryUse | None = None
    distributed: Parallelism | None = None
    #: TF32 allowed and used or not (``None`` for ``convert``, which computes nothing).
    precision: Precision | None = None


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
    #: Estimated relative error of the products (0 for the exact routes).
    error: float = 0.0
    #: How attention was computed, when the model uses scaled_dot_product_attention.
    attention: str = ""


@dataclass(frozen=True)
class Eigenvalue:
    """One eigenvalue: its residual ‖Cy − λy‖, its error and whether it met the tolerance.

    The residual is a guarantee (some eigenvalue lies within it, Bauer–Fike); the error is the
    estimate ‖r‖²/gap of the distance to it (at most the residual), which ``converged`` judges
    against the tolerance.
    """

    value: float
    residual: float
    error: float
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
class Mass:
    """A fraction of the eigenvalues, with its standard error over the probe vectors.

    ``threshold``: eigenvalues below −threshold count (round-off makes a positive
    semi-definite spectrum dip to about −ε‖C‖; those are not negative curvature). ``low`` and
    ``high`` bound what the quadrature cannot resolve (Chebyshev–Markov–Stieltjes): the
    expected fraction lies between them whatever the spectrum; ``stderr`` is the probes' spread.
    """

    value: float
    stderr: float
    threshold: float
    low: float
    high: float


@dataclass(frozen=True)
class Density:
    """Eigenvalue density of one operator by stochastic Lanczos quadrature.

    ``density`` is the Gaussian-smoothed quadrature measure on ``grid``: it integrates to 1
    (fraction of the eigenvalues per unit of λ); ``stderr`` is its standard error over the
    probes. ``nodes`` and ``weights`` are each probe's Gauss quadrature (Ritz values of its
    Lanczos tridiagonal and the squared first components of their eigenvectors).
    ``negative_mass`` counts eigenvalues below round-off (−tol·‖C‖);
    ``significant_negative_mass`` those below −1 % of the largest Ritz value (the ``saddle``
    flag's measure: a trained network's bulk of tiny negative eigenvalues does not count).
    """

    grid: list[float]
    density: list[float]
    stderr: list[float]
    sigma: float
    probes: int
    steps: int
    nodes: list[list[float]]
    weights: list[list[float]]
    negative_mass: Mass
    significant_negative_mass: Mass
    parameters: int


@dataclass(frozen=True)
class DensityResults(Density):
    """Results of ``hesscli density``: the selection's density, and each layer's with --per-layer.

    The inherited fields are the whole selection's. ``top``/``bottom`` are the extreme Ritz
    values of the first probe's Lanczos run (marked on plots), with residuals bounded from the
    recurrence (no more products); ``trace`` is the probes' Hutchinson estimate (the first
    moment of the quadrature, times P).
    """

    top: list[Eigenvalue]
    bottom: list[Eigenvalue]
    trace: Trace
    layers: dict[str, Density]
    engine: Engine


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
