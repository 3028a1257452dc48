"""The curvature operator's passes over the data: weighted sums of micro-batch results.

A pass runs every micro-batch of this rank through its product closure (:mod:`.closures`),
adds each micro-batch's products with its weight, refuses a NaN/Inf product naming the samples,
sums over the ranks, and on running out of memory retries smaller (the operator says how). The
start gradient of Lanczos is one such pass of first derivatives. Kept apart from the operator's
interface so that the arithmetic and the recovery of a pass read in one place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from hesscli.engine.closures import Closures
from hesscli.engine.device import synchronize
from hesscli.engine.device_memory import is_out_of_memory
from hesscli.engine.functional import Params, math_attention, micro_batches
from hesscli.engine.heap import HeapTrimmer
from hesscli.engine.layout import Block, Layout
from hesscli.engine.precision import float32_precision
from hesscli.engine.products import Apply
from hesscli.errors import NumericalError

if TYPE_CHECKING:
    from hesscli.engine.operator import CurvatureOperator


def run_pass(
    op: CurvatureOperator,
    closures: Closures,
    heap: HeapTrimmer,
    requests: list[tuple[Block | None, torch.Tensor]],
    shrink: Callable[[BaseException], None],
) -> list[torch.Tensor]:
    """One pass over this rank's micro-batches, summed over the ranks.

    Each request is ``(block, columns)``: C·V over all coordinates (``block`` None), or
    C_ll·V_l on the rows of one block. Running out of memory is not fatal: the pass
    restarts with half the vmap chunk, then half the micro-batch (neither changes the
    result), until nothing smaller is possible: ``shrink`` makes them smaller, or refuses.
    """
    start = time.perf_counter()
    tangents = [(block, op.layout.unflatten(columns, block)) for block, columns in requests]
    with float32_precision(op.allow_tf32):  # true float32 unless opted in; restored
        while True:
            try:
                totals = _local_pass(
                    op, closures.apply, tangents, [c.shape[1] for _, c in requests]
                )
                break
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                shrink(exc)
    for total in totals:
        op.group.sum_(total)
    closures.judge_symmetry(requests, totals)
    if op.device.type == "cpu":
        heap.after_pass()
    op.counters.data_passes += 1
    synchronize(op.device)  # the pass's kernels are done before the timer is read
    op.counters.seconds += time.perf_counter() - start
    return totals


def _local_pass(
    op: CurvatureOperator,
    apply_of: Callable[[int, object], Apply],
    tangents: list[tuple[Block | None, Params]],
    counts: list[int],
) -> list[torch.Tensor]:
    # Written whole by the first micro-batch (no zero fill), added to by the others.
    totals = [
        torch.empty(
            op.size if block is None else block.size,
            count,
            device=op.device,
            dtype=op.dtype,
        )
        for (block, _), count in zip(tangents, counts, strict=True)
    ]
    if not any(counts):
        return totals
    batches, index = op.num_micro_batches, -1
    with math_attention():
        for index, (first, part, weight) in enumerate(
            micro_batches(op.dataset, op.micro_batch, op.weighting)
        ):
            apply = apply_of(index, part)
            for (block, vectors), total, count in zip(tangents, totals, counts, strict=True):
                if not count:
                    continue
                # Mean: weight uⱼ/U, so the sum is the mean over all units; sum: weight 1.
                # Slot by slot: no flat copy of the columns.
                alpha = weight if op.reduction == "mean" else 1.0
                product = apply(vectors)
                for slot, rows in _rows(op.layout, block, total):
                    piece = product.pop(slot).reshape(count, -1).T
                    if index == 0:
                        torch.mul(piece, alpha, out=rows)
                    else:
                        rows.add_(piece, alpha=alpha)
                # One sum finds a NaN/Inf anywhere; the slots confirm (a sum can overflow).
                if not math.isfinite(float(total.sum())):
                    _refuse_not_finite(op, block, total, first, part.size)
            if op.progress is not None:
                op.progress(index + 1, batches)
    if index < 0:  # no micro-batch on this rank: it adds nothing to the sum
        for total in totals:
            total.zero_()
    return totals


def _rows(
    layout: Layout, block: Block | None, total: torch.Tensor
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(parameter, its rows of total)`` for the slots of ``block`` (all, for None)."""
    offset = 0 if block is None else block.start
    for slot in layout.slots_of(block):
        yield slot.name, total[slot.start - offset : slot.stop - offset]


def _refuse_not_finite(
    op: CurvatureOperator, block: Block | None, total: torch.Tensor, first: int, size: int
) -> None:
    """Refuse a product that is NaN/Inf on samples ``first`` … ``first+size-1``."""
    bad = [name for name, rows in _rows(op.layout, block, total) if not bool(rows.isfinite().all())]
    if not bad:
        return  # finite entries whose sum overflowed
    raise NumericalError(
        f"a {op.kind}-vector product is NaN/Inf on samples {first}-{first + size - 1} "
        f"(in {', '.join(bad[:4])})",
        "check those samples and the weights; try --dtype float64",
    )


def summed_gradient(op: CurvatureOperator) -> torch.Tensor | None:
    """∇L as a ``(P,)`` vector by one forward and backward pass, summed over the ranks.

    Weighted as the products are, so every split of the data and every number of ranks gives
    the same vector up to round-off (see
    :meth:`~.operator.CurvatureOperator.start_gradient`). None if it runs out of memory.
    """
    total = torch.zeros(op.size, device=op.device, dtype=op.dtype)
    start = time.perf_counter()
    parts = op.micro_batch_losses()  # weighted bⱼ/N for mean losses, 1 for sums
    try:
        with float32_precision(op.allow_tf32), math_attention():
            for _, mb, alpha in parts:
                names = list(mb.variables)
                leaves = [mb.variables[n].detach().requires_grad_(True) for n in names]
                loss = mb.loss(dict(zip(names, leaves, strict=True)))
                pieces = torch.autograd.grad(loss, leaves, allow_unused=True)
                found = dict(zip(names, pieces, strict=True))
                for name, rows in _rows(op.layout, None, total[:, None]):
                    if found[name] is not None:
                        rows[:, 0].add_(found[name].reshape(-1), alpha=alpha)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        return None
    op.group.sum_(total)
    op.counters.data_passes += 1
    op.counters.seconds += time.perf_counter() - start
    return total
