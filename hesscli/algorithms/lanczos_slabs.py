"""Where a Lanczos run keeps its parameter-length vectors: the basis, and the products if asked.

The basis (and, when asked, every product C·q_j) is stored in the working dtype, column by
column as contiguous ``(n, P)`` slabs of a ``(K, n, P)`` tensor, allocated slab by slab and
never copied: a Gram–Schmidt pass over one column's rows (:mod:`.lanczos_orthogonal`) is then
two matrix–vector products (GEMV) per slab, a thick restart overwrites the slabs in place
chunk by chunk, and a Ritz vector is one matrix product per slab. The scalars (T, the
bookkeeping) stay in :mod:`.lanczos` and :mod:`.lanczos_projected`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

#: Basis vectors per allocated slab (the basis grows slab by slab, never copied).
SLAB = 16
#: Rows per chunk when a thick restart overwrites the basis with Ritz vectors in place.
RESTART_ROWS = 1 << 20


class Slabs:
    """Vectors ``0, 1, …`` of every column, stored as ``(K, n, P)`` slabs of ``SLAB`` vectors.

    Args:
        rows: P, the length of a vector.
        columns: K, the processes per row.
        dtype: The working dtype.
        device: Where the vectors live.
        cyclic: Keep only two slots, vector ``i`` in slot ``i mod 2`` (the three-term
            recurrence without reorthogonalisation).
    """

    def __init__(
        self, rows: int, columns: int, dtype: torch.dtype, device: torch.device, *, cyclic: bool
    ) -> None:
        self.rows, self.columns = rows, columns
        self.dtype, self.device = dtype, device
        self.cyclic = cyclic
        self.tensors: list[torch.Tensor] = []  # (K, n, P) each

    def __iter__(self) -> Iterator[torch.Tensor]:
        """The allocated ``(K, n, P)`` slabs, in order."""
        return iter(self.tensors)

    def ensure(self, needed: int, capacity: int | None) -> None:
        """Slabs for at least ``needed`` vectors, never more than ``capacity`` in all.

        Two slots in all when cyclic.
        """
        if self.cyclic:
            needed = min(needed, 2)
        held = sum(slab.shape[1] for slab in self.tensors)
        while held < needed:
            size = SLAB if capacity is None else min(SLAB, capacity - held)
            if size <= 0:
                raise RuntimeError("the basis is full")  # advance() restarts before this
            shape = (self.columns, size, self.rows)
            self.tensors.append(torch.empty(shape, dtype=self.dtype, device=self.device))
            held += size

    def slot(self, index: int) -> torch.Tensor:
        """Vector ``index`` of every column: a ``(K, P)`` view."""
        if self.cyclic:
            index %= 2
        return self.tensors[index // SLAB][:, index % SLAB]

    def views(self, column: int, a: int, b: int, count: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first index, (n, b − a) view)`` covering vectors ``0..count`` of one column."""
        for number, slab in enumerate(self.tensors):
            first = number * SLAB
            if first >= count:
                return
            yield first, slab[column, : min(slab.shape[1], count - first), a:b]

    def store(self, index: int, w: torch.Tensor) -> None:
        """Vector ``index`` ← the ``(P, K)`` block ``w``, column by column.

        ``out.copy_(w.T)`` takes a slow strided path, ten times slower even for one column.
        """
        out = self.slot(index)
        for k in range(w.shape[1]):
            out[k].copy_(w[:, k])

    def compress(self, column: int, a: int, b: int, coefficients: torch.Tensor) -> None:
        """Slots ``0..r`` ← (slots ``0..d``)·coefficients on rows a:b, in place, chunk by chunk."""
        d, r = coefficients.shape
        coefficients = coefficients.to(self.dtype).to(self.device)
        rows = min(RESTART_ROWS, b - a)
        buffer = torch.empty((r, rows), dtype=self.dtype, device=self.device)  # one per call
        for first in range(a, b, rows):
            stop = min(b, first + rows)
            combined = buffer[:, : stop - first].zero_()
            for i, view in self.views(column, first, stop, d):
                combined.addmm_(coefficients[i : i + view.shape[0]].T, view)
            for i, view in self.views(column, first, stop, r):
                view.copy_(combined[i : i + view.shape[0]])

    def combine(self, column: int, a: int, b: int, coefficients: torch.Tensor) -> torch.Tensor:
        """(Slots ``0..d``)·coefficients on rows a:b of one column → ``(b − a, r)``.

        In the working dtype (the float64 coefficients are cast down).
        """
        coefficients = coefficients.to(self.dtype).to(self.device)
        out = torch.zeros((b - a, coefficients.shape[1]), dtype=self.dtype, device=self.device)
        for i, view in self.views(column, a, b, coefficients.shape[0]):
            out.addmm_(view.T, coefficients[i : i + view.shape[0]])
        return out
