"""Results of ``hesscli info`` and ``hesscli convert``: the model, checkpoint, data and loss.

These describe the inputs rather than the curvature, so they stand apart from the curvature
results; field names are the JSON contract of DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass


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
