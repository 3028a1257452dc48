"""Contiguous row blocks (layers) of a vector, and reductions over each block at once.

Per-layer quantities are block restrictions of the same vectors: the trace of layer l is the sum
of ``v ∘ Cv`` over its rows, and one Lanczos process runs in each block. ``Segments`` does those
reductions for every block and column in one vectorised call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass(frozen=True)
class Segments:
    """A partition of rows ``0..P`` into contiguous blocks ``[(start, stop), ...]`` in order.

    Attributes:
        bounds: ``(start, stop)`` of each block.
        device: Where :attr:`ids` lives.
    """

    bounds: tuple[tuple[int, int], ...]
    device: torch.device

    @classmethod
    def of(
        cls, size: int, bounds: Sequence[tuple[int, int]] | None = None, *, device: torch.device
    ) -> Segments:
        """Blocks ``bounds`` of a ``size``-row vector (default: one block of everything).

        Raises:
            ValueError: When the blocks do not tile ``0..size`` in order.
        """
        bounds = tuple((int(a), int(b)) for a, b in (bounds or [(0, size)]))
        edges = [0] + [b for _, b in bounds]
        if (
            [a for a, _ in bounds] != edges[:-1]
            or edges[-1] != size
            or any(b <= a for a, b in bounds)
        ):
            raise ValueError(f"blocks {bounds} do not tile 0..{size} in order")
        return cls(bounds, torch.device(device))

    @cached_property
    def ids(self) -> torch.Tensor:
        """``(P,)`` block index of every row (built on first use: P int64 numbers)."""
        lengths = torch.tensor(self.sizes, device=self.device)
        return torch.repeat_interleave(torch.arange(self.count, device=self.device), lengths)

    @property
    def count(self) -> int:
        """Number of blocks S."""
        return len(self.bounds)

    @property
    def sizes(self) -> list[int]:
        """Rows in each block."""
        return [b - a for a, b in self.bounds]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per-block sums over the rows of ``(P, …)`` values → ``(S, …)`` float64."""
        if self.count == 1:
            return values.sum(dim=0, keepdim=True).double()
        return torch.stack([values[a:b].sum(dim=0) for a, b in self.bounds]).double()

    def dot(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-block inner products of the columns of ``x`` and ``y`` → ``(S, K)``."""
        return self.sum(x * y)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """Per-block 2-norms of the columns of ``x`` → ``(S, K)``."""
        return self.dot(x, x).sqrt()

    def project_out(self, basis: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``w`` minus its component along every vector of ``basis`` (``(m, P, K)``), per block.

        Classical Gram–Schmidt as two batched products per block (not m separate dots).
        """
        out = w.clone()
        for a, b in self.bounds:
            q, part = basis[:, a:b], w[a:b]
            coefficients = torch.einsum("mpk,pk->mk", q, part)
            out[a:b] -= torch.einsum("mpk,mk->pk", q, coefficients)
        return out

    def expand(self, per_block: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(S, K)`` coefficients spread to the rows of ``like`` (``(P, K)``), in its dtype."""
        values = per_block.to(like.dtype)
        if self.count == 1:
            return values  # (1, K) broadcasts over the rows: no gather
        return values[self.ids]
