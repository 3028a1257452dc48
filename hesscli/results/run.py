"""What a run read, how it computed and what it spent: ``inputs``, ``settings`` and ``cost``.

Every command fills these the same way (hesscli.runs.envelope), so they live apart from the
per-command results; :class:`~hesscli.results.envelope.Report` carries them beside the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
