"""Lanczos tridiagonalisation with full reorthogonalisation, run once and reused.

Reference: C. Lanczos (1950); full reorthogonalisation ("twice is enough", Parlett 1980 ch. 6).
For a symmetric C and a start vector q₁, after m steps

    C·Q_m = Q_m·T_m + β_m·q_{m+1}·e_mᵀ,   Q_mᵀ·Q_m = I,

with T_m tridiagonal (diagonal α, off-diagonal β). Eigenvalues of T_m (Ritz values) approximate
the extreme eigenvalues of C first; the quadrature nodes of T_m give the spectral density.

Every column of the start block and every row block (layer) of :class:`Segments` runs its own
process in lockstep, so one call of the matmat advances all of them: per-layer Lanczos on a
block-diagonal operator costs one data pass per step, not one per layer. A process whose Krylov
space becomes invariant (β ≈ 0, e.g. after ``size`` steps) stops there: its Ritz values are then
exact eigenvalues to round-off.

Example (a diagonal matrix, exact at full depth)::

    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> run = Lanczos(lambda V: A @ V, torch.ones(5, 1, dtype=torch.float64))
    >>> run.extend(10)
    >>> [round(x, 9) for x in torch.linalg.eigvalsh(run.tridiagonal(0, 0)).tolist()]
    [1.0, 2.0, 3.0, 4.0, 5.0]
"""

from __future__ import annotations

import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.segments import Segments

#: β below this multiple of ε·‖T‖ ends a process (its Krylov space is invariant).
BREAKDOWN = 100.0


class Lanczos:
    """Lanczos processes for every (block, column) of a start block, advanced together.

    Args:
        matmat: ``(P, K) → (P, K)``; must be block-diagonal over ``segments`` (rows of block s
            of the result depend only on rows of block s of the input).
        start: ``(P, K)`` start vectors (any nonzero scale; each block is normalised).
        segments: Row blocks, one process each (default: all rows, one process per column).
        keep_products: Store every product C·q_j too, so that Ritz residuals can be recomputed
            from actual products without calling the matmat again (costs a second basis).

    Attributes:
        basis: ``q_1, q_2, …`` as ``(P, K)`` tensors (a finished process has zero columns).
        products: ``C·q_1, C·q_2, …`` when ``keep_products``.
        alphas, betas: ``(S, K)`` float64 coefficients per step.
        depth: ``(S, K)`` number of valid steps per process.
        finished: ``(S, K)`` whether a process has reached an invariant subspace.
    """

    def __init__(
        self,
        matmat: Matmat,
        start: torch.Tensor,
        *,
        segments: Segments | None = None,
        keep_products: bool = False,
    ) -> None:
        if start.ndim == 1:
            start = start[:, None]
        self.matmat = matmat
        self.segments = segments or Segments.of(start.shape[0], device=start.device)
        self.keep_products = keep_products
        norms = self.segments.norm(start)
        if bool((norms == 0).any()):
            raise ValueError("a start vector is zero on some block")
        self.basis: list[torch.Tensor] = [start / self.segments.expand(norms, start)]
        self.products: list[torch.Tensor] = []
        self.alphas: list[torch.Tensor] = []
        self.betas: list[torch.Tensor] = []
        shape = norms.shape
        self.depth = torch.zeros(shape, dtype=torch.long, device=start.device)
        self.finished = torch.zeros(shape, dtype=torch.bool, device=start.device)
        self._scale = torch.zeros(shape, dtype=torch.float64, device=start.device)
        self._sizes = torch.tensor(self.segments.sizes, device=start.device)[:, None]

    @property
    def steps(self) -> int:
        """Steps taken (products per process)."""
        return len(self.alphas)

    @property
    def done(self) -> bool:
        """Whether every process has reached an invariant subspace."""
        return bool(self.finished.all())

    def extend(self, steps: int) -> None:
        """Take up to ``steps`` more steps (fewer when every process has finished)."""
        for _ in range(steps):
            if self.done:
                return
            self.step()

    def step(self) -> None:
        """One product C·q_j for every process, then the three-term recurrence."""
        seg, q = self.segments, self.basis[-1]
        w = self.matmat(q)
        if self.keep_products:
            self.products.append(w)
        alpha = seg.dot(q, w)
        w = w - seg.expand(alpha, w) * q
        if self.betas:
            w = w - seg.expand(self.betas[-1], w) * self.basis[-2]
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            for previous in self.basis:
                w = w - seg.expand(seg.dot(previous, w), w) * previous
        beta = seg.norm(w)
        active = ~self.finished
        alpha, beta = alpha * active, beta * active
        self.depth += active
        self._scale = torch.maximum(self._scale, alpha.abs() + beta)
        eps = torch.finfo(w.dtype).eps
        ended = (beta <= BREAKDOWN * eps * self._scale) | (self.depth >= self._sizes)
        self.finished |= ended
        beta = torch.where(self.finished, torch.zeros_like(beta), beta)
        self.alphas.append(alpha)
        self.betas.append(beta)
        safe = torch.where(self.finished, torch.ones_like(beta), beta)
        keep = seg.expand((~self.finished).double(), w)
        self.basis.append(w / seg.expand(safe, w) * keep)

    def tridiagonal(self, block: int, column: int) -> torch.Tensor:
        """T of process (block, column): ``(d, d)`` float64 on the CPU, d its depth."""
        d = int(self.depth[block, column])
        alpha = torch.stack([a[block, column] for a in self.alphas[:d]]).cpu()
        beta = (
            torch.stack([b[block, column] for b in self.betas[: d - 1]]).cpu()
            if d > 1
            else alpha.new_zeros(0)
        )
        return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)

    def last_beta(self, block: int, column: int) -> float:
        """β_d of process (block, column): the size of the residual direction q_{d+1}."""
        d = int(self.depth[block, column])
        return float(self.betas[d - 1][block, column]) if d else 0.0

    def vectors(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """``Q·S`` restricted to block: Ritz vectors of process (block, column) → ``(n_s, r)``."""
        return self._combine(self.basis, block, column, coefficients)

    def images(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """``(C·Q)·S`` restricted to block, from the stored products (needs ``keep_products``)."""
        if not self.keep_products:
            raise ValueError("products were not kept")
        return self._combine(self.products, block, column, coefficients)

    def _combine(
        self, vectors: list[torch.Tensor], block: int, column: int, coefficients: torch.Tensor
    ) -> torch.Tensor:
        d = coefficients.shape[0]
        start, stop = self.segments.bounds[block]
        stacked = torch.stack([v[start:stop, column] for v in vectors[:d]], dim=1)
        return stacked.double() @ coefficients.to(stacked.device, torch.float64)
