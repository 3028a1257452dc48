"""Several Lanczos-based searches advanced together, their products sharing each data pass.

A data pass (forward and backward over every micro-batch) costs much the same for 1 column as
for 20, so ``report`` steps the whole-model eigenvalue run, the per-layer runs and the density
probes in lockstep: each step gathers the next vector of every search that still wants one and
hands them to one ``fused(A, B) → (C·A, blockdiag(C)·B)`` call. Each search's numbers are those
it would produce alone (its own start vectors, its own stopping rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from hesscli.algorithms.lanczos import Lanczos

#: ``(A, B) ↦ (C·A, blockdiag(C)·B)``, one data pass for both.
Fused = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Search(Protocol):
    """A stepping state: a Lanczos ``run`` and whether it wants another step."""

    run: Lanczos

    def wants_more(self) -> bool:
        """Whether another step is needed."""
        ...


@dataclass(frozen=True)
class Member:
    """A search and the operator its run multiplies by (``blockwise``: the block diagonal)."""

    search: Search
    blockwise: bool = False


def advance_together(
    members: Sequence[Member],
    fused: Fused,
    *,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Step every member until none wants more; returns the number of fused calls (passes).

    The gathered columns go into two buffers reused from pass to pass while their widths stay
    (a fresh parameter-length allocation costs page faults worth several passes over it).
    """
    passes = 0
    buffers: list[torch.Tensor | None] = [None, None]
    while True:
        active = [m for m in members if m.search.wants_more()]
        if not active:
            return passes
        full = [m for m in active if not m.blockwise]
        block = [m for m in active if m.blockwise]
        like = active[0].search.run.pending()
        a = buffers[0] = _stacked([m.search.run.pending() for m in full], like, buffers[0])
        b = buffers[1] = _stacked([m.search.run.pending() for m in block], like, buffers[1])
        ca, cb = fused(a, b)
        for group, products in ((full, ca), (block, cb)):
            first = 0
            for member in group:
                width = member.search.run.pending().shape[1]
                member.search.run.advance(products[:, first : first + width])
                first += width
        passes += 1
        if on_step is not None:
            on_step(passes)


def _stacked(
    blocks: list[torch.Tensor], like: torch.Tensor, reuse: torch.Tensor | None
) -> torch.Tensor:
    """The columns of ``blocks`` side by side (``(P, 0)`` when there are none).

    Written into ``reuse`` when it has the right shape.
    """
    if not blocks:
        return like[:, :0]
    shape = (like.shape[0], sum(b.shape[1] for b in blocks))
    if reuse is None or tuple(reuse.shape) != shape:
        reuse = like.new_empty(shape)
    return torch.cat(blocks, dim=1, out=reuse)
