"""Lanczos tridiagonalisation with full reorthogonalisation, run once and reused.

Reference: C. Lanczos (1950); full reorthogonalisation ("twice is enough", Parlett 1980 ch. 6).
For a symmetric C and a start vector q₁, after m steps

    C·Q_m = Q_m·T_m + β_m·q_{m+1}·e_mᵀ,   Q_mᵀ·Q_m = I,

with T_m tridiagonal (diagonal α, off-diagonal β). Eigenvalues of T_m (Ritz values) approximate
the extreme eigenvalues of C first; the quadrature nodes of T_m give the spectral density.

Every column of the start block and every row block (layer) of :class:`Segments` runs its own
process in lockstep, so one call of the matmat advances all of them: per-layer Lanczos on a
block-diagonal operator costs one data pass per step, not one per layer. A process whose Krylov
space becomes invariant (β ≈ 0) before it spans its block restarts from a random vector
orthogonal to everything so far (β = 0 is recorded, so T stays tridiagonal): a single Krylov
space holds one copy of a repeated eigenvalue, and the restarts find the other copies (a
last-layer block of an MSE loss is I ⊗ A, every eigenvalue repeated per output). A process ends
when it spans its block; its Ritz values are then exact eigenvalues to round-off.

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
        generator: CPU generator for restart vectors.

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
        generator: torch.Generator | None = None,
    ) -> None:
        if start.ndim == 1:
            start = start[:, None]
        self.matmat = matmat
        self.segments = segments or Segments.of(start.shape[0], device=start.device)
        self.keep_products = keep_products
        self.generator = generator
        self._restarted: torch.Tensor | None = None
        norms = self.segments.norm(start)
        if bool((norms == 0).any()):
            raise ValueError("a start vector is zero on some block")
        # Preallocated, grown by doubling: reorthogonalisation then works on one tensor.
        self._basis = start.new_empty((16, *start.shape))
        self._basis[0] = start / self.segments.expand(norms, start)
        self._products = start.new_empty((16 if keep_products else 0, *start.shape))
        self._count = 1
        self.alphas: list[torch.Tensor] = []
        self.betas: list[torch.Tensor] = []
        shape = norms.shape
        self.depth = torch.zeros(shape, dtype=torch.long, device=start.device)
        self.finished = torch.zeros(shape, dtype=torch.bool, device=start.device)
        self._scale = torch.zeros(shape, dtype=torch.float64, device=start.device)
        self._sizes = torch.tensor(self.segments.sizes, device=start.device)[:, None]

    @property
    def basis(self) -> list[torch.Tensor]:
        """``q_1, q_2, …`` as ``(P, K)`` views (a finished process has zero columns)."""
        return list(self._basis[: self._count])

    @property
    def products(self) -> list[torch.Tensor]:
        """``C·q_1, C·q_2, …`` (when ``keep_products``)."""
        return list(self._products[: len(self.alphas)]) if self.keep_products else []

    @property
    def restarts(self) -> int:
        """Processes that have restarted at least once.

        Their blocks may hold repeated eigenvalues, which only a spanned block resolves.
        """
        return 0 if self._restarted is None else int(self._restarted.sum())

    def restarted(self, block: int, column: int) -> bool:
        """Whether process (block, column) has restarted."""
        return self._restarted is not None and bool(self._restarted[block, column])

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
        self.advance(self.matmat(self.pending()))

    def pending(self) -> torch.Tensor:
        """``q_j``, the ``(P, K)`` block whose product the next step needs.

        With :meth:`advance`, lets a driver compute the products of several runs in one data
        pass (``step()`` is ``advance(matmat(pending()))``).
        """
        return self._basis[self._count - 1]

    def advance(self, w: torch.Tensor) -> None:
        """Take the step with ``w = C·pending()`` computed elsewhere."""
        seg, j = self.segments, self._count - 1
        q = self._basis[j]
        if self.keep_products:
            self._products = _grown(self._products, j + 1)
            self._products[j] = w
        alpha = seg.dot(q, w)
        w = w - seg.expand(alpha, w) * q
        if self.betas:
            w = w - seg.expand(self.betas[-1], w) * self._basis[j - 1]
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = seg.project_out(self._basis[: self._count], w)
        beta = seg.norm(w)
        active = ~self.finished
        alpha, beta = alpha * active, beta * active
        self.depth += active
        self._scale = torch.maximum(self._scale, alpha.abs() + beta)
        eps = torch.finfo(w.dtype).eps
        self.finished |= self.depth >= self._sizes
        invariant = (beta <= BREAKDOWN * eps * self._scale) & ~self.finished
        beta = torch.where(self.finished | invariant, torch.zeros_like(beta), beta)
        self.alphas.append(alpha)
        self.betas.append(beta)
        safe = torch.where(beta > 0, beta, torch.ones_like(beta))
        following = w / seg.expand(safe, w)
        if bool(invariant.any()):
            following = self._restart(following, invariant)
        keep = seg.expand((~self.finished).double(), w)
        self._basis = _grown(self._basis, self._count + 1)
        self._basis[self._count] = following * keep
        self._count += 1

    def _restart(self, following: torch.Tensor, invariant: torch.Tensor) -> torch.Tensor:
        """A random unit vector orthogonal to the basis for every process in ``invariant``."""
        seg = self.segments
        fresh = torch.randn(following.shape, generator=self.generator, dtype=torch.float64)
        fresh = fresh.to(following.device, following.dtype)
        for _ in range(2):
            fresh = seg.project_out(self._basis[: self._count], fresh)
        norms = seg.norm(fresh)
        spent = invariant & (norms <= BREAKDOWN * torch.finfo(following.dtype).eps)
        self.finished |= spent  # nothing orthogonal is left (round-off): the block is spanned
        use = invariant & ~spent
        self._restarted = use if self._restarted is None else self._restarted | use
        fresh = fresh / seg.expand(torch.where(use, norms, torch.ones_like(norms)), fresh)
        return torch.where(seg.expand(use.double(), fresh) > 0, fresh, following)

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
        return self._combine(self._basis, block, column, coefficients)

    def images(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """``(C·Q)·S`` restricted to block, from the stored products (needs ``keep_products``)."""
        if not self.keep_products:
            raise ValueError("products were not kept")
        return self._combine(self._products, block, column, coefficients)

    def _combine(
        self, vectors: torch.Tensor, block: int, column: int, coefficients: torch.Tensor
    ) -> torch.Tensor:
        d = coefficients.shape[0]
        start, stop = self.segments.bounds[block]
        stacked = vectors[:d, start:stop, column].T  # (n_s, d)
        return stacked.double() @ coefficients.to(stacked.device, torch.float64)


def _grown(buffer: torch.Tensor, needed: int) -> torch.Tensor:
    """``buffer`` with room for at least ``needed`` entries along its first axis."""
    if buffer.shape[0] >= needed:
        return buffer
    bigger = buffer.new_empty((max(needed, 2 * buffer.shape[0]), *buffer.shape[1:]))
    bigger[: buffer.shape[0]] = buffer
    return bigger
