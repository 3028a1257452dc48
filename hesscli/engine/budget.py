"""The curvature operator's memory budget: sizing its micro-batches and vmap chunks to memory.

A plan is fitted once from a measured forward of the largest micro-batch, leaving to the
algorithm the bytes it reserves for its own vectors (its Lanczos basis, probes, diagonals) and
giving the gradient-graph cache only what is left; a pass that runs out of memory anyway halves
the vmap chunk, then the micro-batch (neither changes the result). The arithmetic of a plan is
:mod:`.memory`'s; this module applies it to one operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from hesscli.batches import Dataset
from hesscli.engine.device_memory import check_free, format_size, release_cached, total_bytes
from hesscli.engine.functional import math_attention, micro_batches
from hesscli.engine.memory import MemoryPlan, plan_memory
from hesscli.engine.products import MicroBatchLoss
from hesscli.engine.routes import FORWARD, METHODS
from hesscli.errors import MemoryLimitError, first_line

if TYPE_CHECKING:
    from hesscli.engine.operator import CurvatureOperator

log = logging.getLogger("hesscli")

#: Columns pushed through ``vmap`` at once by the forward-over-reverse route.
DEFAULT_CHUNK = 16


class Budget:
    """The memory plan of one operator, and the bytes its algorithm holds of it.

    Sets the operator's ``micro_batch``, ``chunk_size``, ``memory`` and ``cache_bytes``; see
    :meth:`~.operator.CurvatureOperator.fit_memory` and the methods after it.

    Args:
        op: The operator whose work is sized.
        loss_of: Builds a micro-batch's loss on the operator's device and dtype.
    """

    def __init__(self, op: CurvatureOperator, loss_of: Callable[[object], MicroBatchLoss]) -> None:
        self.op = op
        self.loss_of = loss_of
        self.held = 0  # bytes the algorithm has reserved (see reserve)

    def fit(
        self, budget: int, source: str, *, fixed_micro_batch: bool, columns: int, reserve: int
    ) -> MemoryPlan:
        """Size micro-batches and vmap chunks to ``budget`` bytes, from a measured forward."""
        op = self.op
        samples = largest_batch(op.dataset)
        first = next(iter(micro_batches(op.dataset, samples, op.weighting)))
        with math_attention():  # the kernel the products will use saves what it saves
            mb = self.loss_of(first[1])
            # The route the rule will take (the check runs with the first product, so a run
            # that needs none pays nothing); a forward fallback is resized by shrink.
            route = op.route.route if op.route is not None else METHODS[op.method]
            plan = plan_memory(
                mb,
                budget=max(1, budget - reserve),
                source=source,
                micro_batch=op.micro_batch,
                chunk_size=op.chunk_size or DEFAULT_CHUNK,
                fixed_micro_batch=fixed_micro_batch,
                samples=samples,
                vmapped=route == FORWARD,
                columns=columns,
            )
        if reserve >= budget:
            raise MemoryLimitError(
                f"the algorithm alone needs {format_size(reserve)}, more than the "
                f"{format_size(budget)} budget ({source})",
                "raise --max-memory, or ask for less (fewer steps, probes or layers)",
            )
        op.micro_batch, op.chunk_size = plan.micro_batch, plan.chunk_size
        op.memory, self.held = replace(plan, budget=budget), 0
        self.reserve(reserve)
        return op.memory

    def spare_bytes(self) -> int:
        """Bytes of the budget left to the algorithm: not planned for products or reserved."""
        memory = self.op.memory
        if memory is None:
            return total_bytes(self.op.device) // 4
        return max(0, memory.budget - memory.estimate - self.held)

    def reserve(self, size: int) -> None:
        """Set ``size`` more bytes of the budget aside; the cache gets only what is left."""
        op = self.op
        if op.memory is None or size <= 0:
            return
        self.held += size
        op.memory = replace(op.memory, reserve=max(op.memory.reserve, self.held))
        op.cache_bytes = min(op.cache_bytes, self.spare_bytes())
        check_free(op.memory.estimate + self.held, op.device, source=op.memory.source)

    def free(self, size: int) -> None:
        """Give back ``size`` reserved bytes (a phase of the algorithm is over)."""
        self.held = max(0, self.held - size)

    def shrink(self, exc: BaseException) -> None:
        """Halve the vmap chunk (forward route), else the micro-batch, after running out."""
        op = self.op
        op.release()
        release_cached(op.device)
        chunk = op.chunk_size or DEFAULT_CHUNK
        route = op.route.route if op.route is not None else METHODS[op.method]
        if route == FORWARD and chunk > 1:  # the reverse route takes one column at a time
            op.chunk_size = chunk // 2
            change = f"{op.chunk_size} columns per vmap call"
        elif op.micro_batch > 1:
            op.micro_batch = (min(op.micro_batch, largest_batch(op.dataset)) + 1) // 2
            change = f"micro-batches of {op.micro_batch}"
        else:
            raise MemoryLimitError(
                f"out of memory on {op.device} even with one sample per micro-batch and one "
                f"column per product ({first_line(exc)})",
                "use --dtype float32, fewer layers (--layer), a device with more memory, or "
                "more processes (torchrun)",
            ) from exc
        log.warning("out of memory on %s; retrying with %s", op.device, change)


def largest_batch(dataset: Dataset) -> int:
    """Samples in the largest batch of ``dataset``: the most one micro-batch can hold."""
    return max(b.size for b in dataset.batches)


def default_cache_bytes(device: torch.device) -> int:
    """A quarter of the total memory of ``device`` (a plan lowers it to what it leaves free)."""
    return total_bytes(device) // 4
