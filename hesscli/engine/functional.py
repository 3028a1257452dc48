"""The training loss as a pure function of a parameter dict, and the weighted micro-batch loop.

Parameters are ``dict[str, Tensor]`` keyed by ``named_parameters()`` names; ``functional_call``
treats the dict as overrides, so frozen parameters and buffers stay the module's own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from hesscli.batches import Batch, Dataset, Inputs, map_inputs
from hesscli.engine.weighting import SAMPLES, Weighting

#: Micro-batch size used when the user sets none.
DEFAULT_MICRO_BATCH = 512

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MicroBatchPosition:
    """Which micro-batch :func:`micro_batches` handed out last: for error messages only.

    Attributes:
        index: 1-based number of the micro-batch.
        count: Micro-batches in the pass.
        first: Index of its first sample (in this process's data).
        stop: One past its last sample.
    """

    index: int
    count: int
    first: int
    stop: int


_POSITION: contextvars.ContextVar[MicroBatchPosition | None] = contextvars.ContextVar(
    "hesscli_micro_batch", default=None
)


def current_micro_batch() -> MicroBatchPosition | None:
    """The micro-batch being worked on, so that a failure in the user's code can say which."""
    return _POSITION.get()


def trainable_parameters(model: nn.Module) -> Params:
    """Detached copies (sharing storage) of the parameters that require gradients."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def prepare_model(
    model: nn.Module, *, device: torch.device, dtype: torch.dtype, train_mode: bool
) -> nn.Module:
    """Move floating parameters and buffers to ``device``/``dtype`` and set eval or train mode."""
    model.to(device=device, dtype=dtype)
    model.train(train_mode)
    return model


def to_device(batch: Batch, *, device: torch.device, dtype: torch.dtype) -> Batch:
    """Move a batch; floating tensors also take ``dtype`` (integer ids and labels keep theirs)."""

    def move(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.to(device=device, dtype=dtype)
        return tensor.to(device=device)

    return Batch(map_inputs(batch.inputs, move), move(batch.targets))


def call_model(model: nn.Module, params: Params, inputs: Inputs) -> torch.Tensor:
    """Run ``model`` with ``params`` overriding its own (tensor, tuple or dict inputs)."""
    if isinstance(inputs, torch.Tensor):
        return functional_call(model, params, (inputs,))
    if isinstance(inputs, dict):
        return functional_call(model, params, (), inputs)
    return functional_call(model, params, tuple(inputs))


def batch_loss(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[Params, Batch], torch.Tensor]:
    """The mean loss of one batch as a pure function of the parameters."""

    def loss(params: Params, batch: Batch) -> torch.Tensor:
        return loss_fn(call_model(model, params, batch.inputs), batch.targets)

    return loss


def math_attention() -> contextlib.AbstractContextManager:
    """Route ``scaled_dot_product_attention`` to its math kernel.

    The fused kernels (flash, memory-efficient, the CPU flash kernel) have neither forward-mode
    nor double-backward rules; the math kernel, built from differentiable primitives, has both.
    """
    return sdpa_kernel(SDPBackend.MATH)


def micro_batches(
    dataset: Dataset, size: int | None, weighting: Weighting | None = None
) -> Iterator[tuple[int, Batch, float]]:
    """Yield ``(first sample index, micro-batch, weight uⱼ/U)`` covering every sample once.

    Weighting each micro-batch's *mean* loss by its share of the units (samples, or real
    tokens) makes the sum equal the mean over all of them, whatever the split (the last
    micro-batch may be smaller): never a plain sum, and never a division by the number of
    micro-batches. A micro-batch with no units (only padding) has weight 0 and an undefined
    mean, so it is skipped. Without ``weighting``: samples of ``dataset`` alone.
    """
    step = size or DEFAULT_MICRO_BATCH
    if weighting is None:
        weighting = Weighting(SAMPLES, dataset.num_samples, dataset.num_samples)
    count = sum(-(-batch.size // step) for batch in dataset.batches)
    offset, index = 0, 0
    for batch in dataset.batches:
        for start in range(0, batch.size, step):
            part = batch.slice(start, min(start + step, batch.size))
            index += 1
            _POSITION.set(
                MicroBatchPosition(index, count, offset + start, offset + start + part.size)
            )
            weight = weighting.weight(part)
            if weight > 0:
                yield offset + start, part, weight
        offset += batch.size
