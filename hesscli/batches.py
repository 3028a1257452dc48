"""The batch types that loading produces and the engine consumes.

A neutral module, so that the engine takes a model, a loss and batches without knowing where
they were read from: :mod:`hesscli.loading` builds :class:`Batch` and :class:`Dataset` from files,
text or factories, and :mod:`hesscli.engine` differentiates over them. Inputs may be one tensor,
a tuple of tensors (passed positionally) or a dict of tensors (passed as keyword arguments).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

#: Targets equal to this are padding for cross-entropy and NLL (``F.cross_entropy``'s default).
IGNORE_INDEX = -100

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def map_inputs(inputs: Inputs, fn: Any) -> Inputs:
    """Apply ``fn`` to every tensor of ``inputs``, keeping its structure."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: fn(v) for k, v in inputs.items()}
    return tuple(fn(v) for v in inputs)


def input_tensors(inputs: Inputs) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs of ``inputs`` for messages and summaries."""
    if isinstance(inputs, torch.Tensor):
        return [("inputs", inputs)]
    if isinstance(inputs, dict):
        return [(f"inputs[{k!r}]", v) for k, v in inputs.items()]
    return [(f"inputs[{i}]", v) for i, v in enumerate(inputs)]


def apply_model(model: torch.nn.Module, inputs: Inputs) -> Any:
    """Call ``model`` on ``inputs``: a tensor positionally, a tuple unpacked, a dict as kwargs."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(*inputs)


@dataclass(frozen=True)
class Batch:
    """One batch: model inputs and loss targets, sharing their first (sample) dimension."""

    inputs: Inputs
    targets: torch.Tensor

    @property
    def size(self) -> int:
        """Number of samples."""
        return int(self.targets.shape[0])

    def slice(self, start: int, stop: int) -> Batch:
        """Samples ``start:stop`` of this batch."""
        return Batch(map_inputs(self.inputs, lambda t: t[start:stop]), self.targets[start:stop])


@dataclass(frozen=True)
class Dataset:
    """All evaluation samples, in a fixed order.

    Attributes:
        batches: The batches as read (a file gives one; a factory may give many).
        source: Where the data came from (file path or factory spec).
        format: ``"pt"``, ``"safetensors"``, ``"npz"`` or ``"factory"``.
        available: Samples available before ``--max-samples`` truncation.
    """

    batches: tuple[Batch, ...]
    source: str
    format: str
    available: int

    @property
    def num_samples(self) -> int:
        """Number of samples used."""
        return sum(b.size for b in self.batches)

    @property
    def first(self) -> Batch:
        """The first batch."""
        return self.batches[0]

    def subset(self, start: int, stop: int) -> Dataset:
        """Samples ``start:stop`` in data-set order, across batch boundaries."""
        kept, offset = [], 0
        for batch in self.batches:
            low, high = max(start - offset, 0), min(stop - offset, batch.size)
            if low < high:
                kept.append(batch if (low, high) == (0, batch.size) else batch.slice(low, high))
            offset += batch.size
        return Dataset(tuple(kept), self.source, self.format, self.available)
