"""Memory: the model of a product's peak, and the plan that sizes micro-batches and vmap chunks.

A product's peak memory grows with the micro-batch b (activations of the forward pass and of
its derivatives) and with the vmap chunk c (tangents and products, each the size of the
parameters, and the batched tangent activations). Both are picked to fit a budget:
``--max-memory``, or by default a share of the device's total memory (the budget, and the gate
on the free memory, are :mod:`hesscli.engine.device_memory`'s). The model of the peak is
measured, not guessed: the bytes autograd saves for one sample come from a real forward and
backward on the first micro-batch. The operator still recovers from an actual out-of-memory
error by halving c, then b.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from hesscli.engine.device_memory import format_size, is_out_of_memory
from hesscli.engine.products import MicroBatchLoss
from hesscli.errors import MemoryLimitError

log = logging.getLogger("hesscli")

#: Copies of the parameters alive at once, per product column: the tangent, its
#: unflattened view, the product, its flat copy, the pass total and the gradient's tangent.
COPIES_PER_COLUMN = 6
#: Copies of the parameters alive whatever the columns: weights, gradient, gradient graph.
FIXED_COPIES = 3
#: Saved activations per sample, relative to one backward: primal and gradient graph; and
#: per sample and column: forward and backward tangents.
ACTIVATIONS_PER_SAMPLE, ACTIVATIONS_PER_SAMPLE_COLUMN = 2, 2
#: Reverse route: the kept graph of the gradient (forward activations and the backward's own)
#: and the double backward's transient activations, per sample, relative to one backward.
REVERSE_ACTIVATIONS_PER_SAMPLE = 4
#: Reverse route: copies of the parameters alive during one column (its product, pieces).
REVERSE_COPIES = 2
#: Copies of the parameters per column a pass carries: the caller's columns, their
#: per-parameter tangents, the products and the pass's sums.
COLUMN_BUFFERS = 4
#: Samples the activation measurement runs (two sizes give bytes per sample).
_MEASURE_SAMPLES = 8


class SavedBytes(contextlib.AbstractContextManager):
    """Bytes of the tensors autograd saves while the context is open (distinct storages)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        try:
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key not in self._seen:
                self._seen.add(key)
                self.total += storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without storage (functorch)
            pass
        # A detached alias, never the tensor itself: the graph holds what pack returns, and a
        # saved *output* returned as is points back to its own grad_fn, a cycle through C++
        # that no collector breaks (every uncached product leaked its micro-batch's graph).
        # Unpacking gives autograd the same storage and version counter, and it restores the
        # grad_fn itself.
        return tensor.detach()

    def __enter__(self) -> SavedBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


@dataclass(frozen=True)
class MemoryPlan:
    """Micro-batch and vmap chunk sizes chosen for a memory budget, and the model behind them.

    Attributes:
        budget: Bytes the run may use on its device.
        source: ``--max-memory`` or ``automatic (...)``.
        micro_batch: Samples per micro-batch.
        chunk_size: Product columns per vmap call.
        estimate: Predicted peak bytes of one product pass at these sizes.
        parameter_bytes: Bytes of one copy of the differentiated parameters.
        sample_bytes: Bytes autograd saves per sample in one forward and backward (measured).
        reserve: Bytes set aside for the algorithm (Lanczos vectors, probes, sketches).
    """

    budget: int
    source: str
    micro_batch: int
    chunk_size: int
    estimate: int
    parameter_bytes: int
    sample_bytes: int
    reserve: int = 0

    def describe(self) -> str:
        """One line for the run's plan."""
        kept = f" + {format_size(self.reserve)} of vectors" if self.reserve else ""
        return (
            f"micro-batch {self.micro_batch}, {self.chunk_size} columns per vmap call, "
            f"≈{format_size(self.estimate)} peak{kept} of {format_size(self.budget)} "
            f"({self.source})"
        )


def peak_estimate(
    parameter_bytes: int,
    sample_bytes: int,
    micro_batch: int,
    chunk: int,
    *,
    vmapped: bool = True,
    columns: int = 0,
) -> int:
    """Predicted peak bytes of a pass with micro-batch ``micro_batch`` and vmap chunk ``chunk``.

    ``vmapped``: the forward route, whose ``chunk`` columns run at once; the reverse route takes
    one column at a time through the kept gradient graph, so its peak does not grow with the
    chunk. ``columns``: the columns one pass carries (their tangents, products and sums).
    """
    buffers = COLUMN_BUFFERS * columns * parameter_bytes
    if not vmapped:
        return (
            (FIXED_COPIES + REVERSE_COPIES) * parameter_bytes
            + REVERSE_ACTIVATIONS_PER_SAMPLE * micro_batch * sample_bytes
            + buffers
        )
    return (
        (FIXED_COPIES + COPIES_PER_COLUMN * chunk) * parameter_bytes
        + ACTIVATIONS_PER_SAMPLE * micro_batch * sample_bytes
        + ACTIVATIONS_PER_SAMPLE_COLUMN * micro_batch * chunk * sample_bytes
        + buffers
    )


def sample_bytes(mb: MicroBatchLoss, samples: int) -> int:
    """Bytes autograd saves per sample for one forward and backward, from two batch sizes."""
    sizes = (1, min(_MEASURE_SAMPLES, samples))
    saved = []
    for size in dict.fromkeys(sizes):
        part = MicroBatchLoss(mb.model, mb.loss_fn, mb.batch.slice(0, size), mb.variables, mb.fixed)
        leaves = {n: t.detach().requires_grad_(True) for n, t in part.variables.items()}
        with SavedBytes() as counted:
            loss = part.loss(leaves)
        torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        saved.append(counted.total)
    if len(saved) == 1:
        return saved[0]
    return max(0, (saved[1] - saved[0]) // (sizes[1] - sizes[0])) or saved[0]


def plan_memory(
    mb: MicroBatchLoss,
    *,
    budget: int,
    source: str,
    micro_batch: int,
    chunk_size: int,
    fixed_micro_batch: bool,
    samples: int,
    vmapped: bool = True,
    columns: int = 0,
) -> MemoryPlan:
    """The largest micro-batch and chunk (at most the ones asked for) whose peak fits.

    Halves the chunk down to 4, then the micro-batch down to 1, then the chunk down to 1 (the
    chunk only for the ``vmapped`` forward route; ``columns`` as in :func:`peak_estimate`).

    Raises:
        MemoryLimitError: when an explicit budget is below the smallest possible run.
    """
    params = sum(t.numel() * t.element_size() for t in mb.variables.values())
    try:
        per_sample = sample_bytes(mb, samples)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        try:  # one sample may still fit
            per_sample = sample_bytes(mb, 1)
        except (RuntimeError, MemoryError) as again:
            if not is_out_of_memory(again):
                raise
            raise MemoryLimitError(
                "out of memory in one forward and backward of a single sample",
                "use --dtype float32, fewer layers (--layer), or a device with more memory",
            ) from again
    asked = min(micro_batch, samples)  # a micro-batch never exceeds the largest batch
    b, c = asked, chunk_size

    def peak(b: int, c: int) -> int:
        return peak_estimate(params, per_sample, b, c, vmapped=vmapped, columns=columns)

    def fits(b: int, c: int) -> bool:
        return peak(b, c) <= budget

    while vmapped and not fits(b, c) and c > 4:
        c //= 2
    while not fits(b, c) and b > 1 and not fixed_micro_batch:
        b = (b + 1) // 2
    while vmapped and not fits(b, c) and c > 1:
        c //= 2
    while b < asked and not fixed_micro_batch and fits(min(2 * b, asked), c):
        b = min(2 * b, asked)  # a smaller chunk may leave room for more samples
    estimate = peak(b, c)
    if estimate > budget:
        least = peak(b if fixed_micro_batch else 1, 1)
        smallest = format_size(least)
        if source == "--max-memory":
            raise MemoryLimitError(
                f"--max-memory {format_size(budget)} is below the {smallest} this run needs "
                "at its smallest",
                "raise --max-memory, select fewer layers (--layer)"
                + ("" if not fixed_micro_batch else ", or drop --micro-batch"),
            )
        log.warning(
            "the run may not fit in memory: it needs about %s at its smallest and %s is free",
            smallest,
            format_size(budget),
        )
    return MemoryPlan(budget, source, b, c, estimate, params, per_sample)
