"""Lanczos with full reorthogonalisation and thick restarts, run once and reused.

References: C. Lanczos (1950); reorthogonalisation by classical Gram–Schmidt, repeated when the
first pass cancelled much of the vector (Daniel, Gragg, Kaufman & Stewart 1976; "twice is
enough", Parlett 1980 §6.9); thick restart: K. Wu & H. Simon, "Thick-restart Lanczos method for
large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22 (2000). For a symmetric C
and a start vector q₁, after m steps

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

Memory and cost. The basis is stored in the working dtype, column by column as contiguous
``(n, P)`` slabs, so a Gram–Schmidt pass is two matrix–vector products (GEMV) over it and no
parameter-length vector is ever copied to float64; T, the Ritz coefficients and all scalars
are float64 on the CPU. A second pass runs only when the first removed more than 1 − 1/√2 of
the vector's norm; both choices depend on the numbers alone, so a run is deterministic.
:func:`~.lanczos_memory.lanczos_bytes` says what a run holds. With ``max_basis`` the basis
never holds more than that many vectors: when it is full, a *thick restart* (Wu & Simon)
replaces it by the wanted Ritz vectors Y (the largest and smallest Ritz values, plus a few
more) and the residual direction q_{m+1}. Then C·Y = Y·Θ + q_{m+1}·σᵀ with σ = β_m·(last row of
the kept eigenvectors of T), so the new T is an arrow (diag(Θ) bordered by σ) followed by the
tridiagonal of the steps that follow; it is kept as a dense small matrix and the relation above
still holds with it. Without reorthogonalisation (``reorthogonalise=False``) only the last two
vectors are kept (the three-term recurrence with a local correction): memory no longer grows
with the steps, which is what stochastic Lanczos quadrature needs (see :mod:`.density`).

This module holds the stepping and the bookkeeping; the vectors live in
:mod:`.lanczos_slabs`, the Gram–Schmidt kernels in :mod:`.lanczos_orthogonal`, T and its thick
restart in :mod:`.lanczos_projected`, and the memory arithmetic in :mod:`.lanczos_memory`.

Example (a diagonal matrix, exact at full depth)::

    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> run = Lanczos(lambda V: A @ V, torch.ones(5, 1, dtype=torch.float64))
    >>> run.extend(10)
    >>> [round(x, 9) for x in torch.linalg.eigvalsh(run.tridiagonal(0, 0)).tolist()]
    [1.0, 2.0, 3.0, 4.0, 5.0]
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.lanczos_orthogonal import BREAKDOWN, orthogonal_draw, orthogonalise, recur
from hesscli.algorithms.lanczos_projected import Projected, restart_keeps
from hesscli.algorithms.lanczos_slabs import Slabs
from hesscli.algorithms.segments import Segments


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
        max_basis: Most basis vectors (of length P, per column) the run holds; when the basis
            is full, the next step first thick-restarts it. ``None``: grow without bound.
        wanted: ``(largest, smallest)`` Ritz pairs a thick restart must keep; it keeps up to
            half of the remaining room more (split between the two ends as they are asked).
            ``(0, 0)``: never restart (a full basis is an error), as a quadrature needs.
        reorthogonalise: ``False``: keep only the last two vectors (the three-term recurrence
            with a local correction; no Ritz vectors, no random restarts).

    Attributes:
        alphas, betas: ``(S, K)`` float64 coefficients of every step taken (CPU).
        depth: ``(S, K)`` number of steps (products) per process.
        order: ``(S, K)`` order of each process's T (= depth until a thick restart).
        finished: ``(S, K)`` whether a process has reached an invariant subspace.
        thick_restarts: How many times the basis was thick-restarted.
    """

    def __init__(
        self,
        matmat: Matmat,
        start: torch.Tensor,
        *,
        segments: Segments | None = None,
        keep_products: bool = False,
        generator: torch.Generator | None = None,
        max_basis: int | None = None,
        wanted: tuple[int, int] = (1, 0),
        reorthogonalise: bool = True,
    ) -> None:
        if start.ndim == 1:
            start = start[:, None]
        if max_basis is not None and max_basis < 2:
            raise ValueError(f"max_basis must hold at least 2 vectors, got {max_basis}")
        if not reorthogonalise and keep_products:
            raise ValueError("keep_products needs the basis (reorthogonalise=True)")
        self.matmat = matmat
        self.segments = segments or Segments.of(start.shape[0], device=start.device)
        self.keep_products = keep_products
        self.generator = generator
        self.reorthogonalise = reorthogonalise
        self.wanted = wanted
        self.dtype, self.device = start.dtype, start.device
        self._capacity = max_basis if reorthogonalise else 2
        self._rows, self._columns = start.shape
        shape = (self.segments.count, self._columns)
        self.depth = torch.zeros(shape, dtype=torch.long)
        self.finished = torch.zeros(shape, dtype=torch.bool)
        self.thick_restarts = 0
        self.alphas: list[torch.Tensor] = []
        self.betas: list[torch.Tensor] = []
        self._restarted: torch.Tensor | None = None
        self._projected = Projected(shape)  # T of every process, and its row defects
        like = (self._rows, self._columns, self.dtype, self.device)
        self._slabs = Slabs(*like, cyclic=not reorthogonalise)  # the basis
        self._kept = Slabs(*like, cyclic=False) if keep_products else None  # the products
        self._steps = 0
        self._count = 1
        self._ensure(1)
        first = self._slabs.slot(0)
        for _s, (a, b), k in self._processes():
            norm = float(torch.linalg.vector_norm(start[a:b, k]))
            if norm == 0:
                raise ValueError("a start vector is zero on some block")
            torch.div(start[a:b, k], norm, out=first[k, a:b])

    # -- state -----------------------------------------------------------------------------
    @property
    def order(self) -> torch.Tensor:
        """``(S, K)`` order of each process's T (= depth until a thick restart)."""
        return self._projected.order

    @property
    def basis(self) -> list[torch.Tensor]:
        """``q_1, q_2, …`` as ``(P, K)`` views (a finished process has zero columns).

        After a thick restart these are the kept Ritz vectors, then the newer vectors; without
        reorthogonalisation only the last two vectors are kept.
        """
        first = 0 if self.reorthogonalise else max(0, self._count - 2)
        return [self._slabs.slot(i).T for i in range(first, self._count)]

    @property
    def products(self) -> list[torch.Tensor]:
        """``C·q_1, C·q_2, …`` (when ``keep_products``), as ``(P, K)`` views."""
        if self._kept is None:
            return []
        return [self._kept.slot(i).T for i in range(self._count - 1)]

    @property
    def restarts(self) -> int:
        """Processes that have restarted at least once (their Krylov space closed).

        Their blocks may hold repeated eigenvalues, which only a spanned block resolves.
        """
        return 0 if self._restarted is None else int(self._restarted.sum())

    def restarted(self, block: int, column: int) -> bool:
        """Whether process (block, column) has restarted."""
        return self._restarted is not None and bool(self._restarted[block, column])

    @property
    def steps(self) -> int:
        """Steps taken (products per process)."""
        return self._steps

    @property
    def done(self) -> bool:
        """Whether every process has reached an invariant subspace."""
        return bool(self.finished.all())

    # -- stepping ---------------------------------------------------------------------------
    def extend(self, steps: int) -> None:
        """Take up to ``steps`` more steps (fewer when every process has finished)."""
        for _ in range(steps):
            if self.done:
                return
            self.step()

    def step(self) -> None:
        """One product C·q_j for every process, then the recurrence."""
        self.advance(self.matmat(self.pending()))

    def pending(self) -> torch.Tensor:
        """``q_j``, the ``(P, K)`` block whose product the next step needs.

        With :meth:`advance`, lets a driver compute the products of several runs in one data
        pass (``step()`` is ``advance(matmat(pending()))``). A view of the basis: contiguous
        for one column, column-major for several.
        """
        return self._slabs.slot(self._count - 1).T

    def advance(self, w: torch.Tensor) -> None:
        """Take the step with ``w = C·pending()`` computed elsewhere."""
        if self.reorthogonalise and self._capacity is not None and self._count >= self._capacity:
            self._thick_restart()
        j = self._count - 1
        self._ensure(j + 2)
        self._projected.reserve(int(self.order.max()) + 1)
        if self._kept is not None:
            self._kept.store(j, w)
        following = self._slabs.slot(j + 1)
        scale = self._projected.scale
        alphas = torch.zeros_like(scale)
        betas = torch.zeros_like(scale)
        fresh: list[torch.Tensor] = []  # one random draw per step, shared by every restart
        eps = torch.finfo(self.dtype).eps
        for s, (a, b), k in self._processes():
            target = following[k, a:b]
            if self.finished[s, k]:
                target.zero_()
                continue
            defect = 0.0
            previous, sigma = self._projected.couplings(s, k)
            if self.reorthogonalise:
                alpha, beta, defect = orthogonalise(
                    self._slabs, w[a:b, k], target, k, a, b, j + 1, previous=previous, sigma=sigma
                )
            else:
                alpha, beta = recur(
                    self._slabs, w[a:b, k], target, k, a, b, j + 1, previous=previous
                )
            o = int(self.order[s, k])
            self.depth[s, k] += 1
            scale[s, k] = max(float(scale[s, k]), abs(alpha) + beta)
            spanned = o + 1 >= self.segments.sizes[s]
            invariant = not spanned and beta <= BREAKDOWN * eps * float(scale[s, k])
            if spanned or invariant:
                beta = 0.0
            self._projected.append(s, k, alpha, beta, defect)
            alphas[s, k], betas[s, k] = alpha, beta
            if spanned or (invariant and not self.reorthogonalise):
                self.finished[s, k] = True  # spanned, or invariant: its quadrature is exact
                target.zero_()
            elif invariant:
                self._restart(target, s, k, a, b, j + 1, fresh)
            else:
                target.div_(beta)
        self.alphas.append(alphas)
        self.betas.append(betas)
        self._steps += 1
        self._count += 1

    def _restart(
        self,
        target: torch.Tensor,
        s: int,
        k: int,
        a: int,
        b: int,
        count: int,
        fresh: list[torch.Tensor],
    ) -> None:
        """A random unit vector orthogonal to the basis, into ``target`` (or finish)."""
        if not fresh:
            draw = torch.randn(
                (self._rows, self._columns), generator=self.generator, dtype=self.dtype
            )
            fresh.append(draw.to(self.device))
        if not orthogonal_draw(self._slabs, fresh[0][a:b, k], target, k, a, b, count):
            self.finished[s, k] = True  # nothing orthogonal is left (round-off): spanned
            return
        if self._restarted is None:
            self._restarted = torch.zeros_like(self.finished)
        self._restarted[s, k] = True

    # -- thick restart -------------------------------------------------------------------------
    def _thick_restart(self) -> None:
        """Replace the full basis by kept Ritz vectors and the residual direction (Wu & Simon)."""
        assert self._capacity is not None
        top, bottom = restart_keeps(self._capacity, self.wanted)
        kept = top + bottom
        last = self._count - 1  # the pending q_{m+1}
        for s, (a, b), k in self._processes():
            if int(self.order[s, k]) <= kept:
                continue  # a finished process with a small T: already compact
            coefficients = self._projected.thick_restart(s, k, top, bottom)
            self._slabs.compress(k, a, b, coefficients)
            self._slabs.slot(kept)[k, a:b].copy_(self._slabs.slot(last)[k, a:b])
            if self._kept is not None:
                self._kept.compress(k, a, b, coefficients)
        self._count = kept + 1
        self.thick_restarts += 1

    # -- the small matrix and Ritz vectors -----------------------------------------------------
    def projected(self, block: int, column: int) -> torch.Tensor:
        """T of process (block, column): ``(d, d)`` float64 on the CPU, d its order.

        Tridiagonal, or after a thick restart an arrow (the kept Ritz values bordered by their
        couplings σ) followed by a tridiagonal; in both cases C·Q = Q·T + β·q·e_dᵀ.
        """
        return self._projected.matrix(block, column)

    tridiagonal = projected

    def last_beta(self, block: int, column: int) -> float:
        """β_d of process (block, column): the size of the residual direction q_{d+1}."""
        return self._projected.last_beta(block, column)

    def residual_bounds(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """Bounds on ‖C·Q·s − Q·T·s‖ + ‖…‖: the Ritz residuals of process (block, column).

        For each column s of ``coefficients`` (unit eigenvectors of :meth:`projected`, so
        that T·s = θ·s), ‖C·y − θ·y‖ for y = Q·s is at most |β_d·s_d| (the recurrence's
        residual) plus Σᵢ|sᵢ|·defectᵢ (what T leaves out of each C·qᵢ, see
        :func:`~.lanczos_orthogonal.orthogonalise`), as long as Q stays orthonormal, which full
        reorthogonalisation keeps to round-off. No product and no parameter-length vector:
        small-matrix arithmetic on the CPU, float64.
        """
        return self._projected.residual_bounds(block, column, coefficients)

    def vectors(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """``Q·S`` restricted to block: Ritz vectors of process (block, column) → ``(n_s, r)``.

        In the working dtype (the float64 coefficients are cast down).
        """
        if not self.reorthogonalise:
            raise ValueError("the basis was not kept (reorthogonalise=False): no Ritz vectors")
        return self._slabs.combine(column, *self.segments.bounds[block], coefficients)

    def images(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """``(C·Q)·S`` restricted to block, from the stored products (needs ``keep_products``)."""
        if self._kept is None:
            raise ValueError("products were not kept")
        return self._kept.combine(column, *self.segments.bounds[block], coefficients)

    # -- storage -----------------------------------------------------------------------------
    def _processes(self) -> Iterator[tuple[int, tuple[int, int], int]]:
        for s, bounds in enumerate(self.segments.bounds):
            for k in range(self._columns):
                yield s, bounds, k

    def _ensure(self, needed: int) -> None:
        """Slabs for at least ``needed`` vectors (two slots in all without reorthogonalising)."""
        self._slabs.ensure(needed, self._capacity)
        if self._kept is not None:
            self._kept.ensure(needed, self._capacity)  # grows in step with the basis
