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
:func:`lanczos_bytes` says what a run holds. With ``max_basis`` the basis never holds more than
that many vectors: when it is full, a *thick restart* (Wu & Simon) replaces it by the wanted
Ritz vectors Y (the largest and smallest Ritz values, plus a few more) and the residual
direction q_{m+1}. Then C·Y = Y·Θ + q_{m+1}·σᵀ with σ = β_m·(last row of the kept eigenvectors of
T), so the new T is an arrow (diag(Θ) bordered by σ) followed by the tridiagonal of the steps
that follow; it is kept as a dense small matrix and the relation above still holds with it.
Without reorthogonalisation (``reorthogonalise=False``) only the last two vectors are kept (the
three-term recurrence with a local correction): memory no longer grows with the steps, which
is what stochastic Lanczos quadrature needs (see :mod:`.density`).

Example (a diagonal matrix, exact at full depth)::

    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> run = Lanczos(lambda V: A @ V, torch.ones(5, 1, dtype=torch.float64))
    >>> run.extend(10)
    >>> [round(x, 9) for x in torch.linalg.eigvalsh(run.tridiagonal(0, 0)).tolist()]
    [1.0, 2.0, 3.0, 4.0, 5.0]
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.segments import Segments

#: β below this multiple of ε·‖T‖ ends a process (its Krylov space is invariant).
BREAKDOWN = 100.0
#: A second Gram–Schmidt pass when the first left less than this fraction of the norm (DGKS).
AGAIN = 1 / math.sqrt(2)
#: Basis vectors per allocated slab (the basis grows slab by slab, never copied).
SLAB = 16
#: Round-off of forming one reorthogonalised step, in units of ε times the norms involved
#: (a few subtractions and a normalisation; see :meth:`Lanczos.residual_bounds`).
ROUNDING = 8.0
#: Rows per chunk when a thick restart overwrites the basis with Ritz vectors in place.
RESTART_ROWS = 1 << 20
#: Parameter-length vectors per column that a step holds besides the basis: the product
#: handed to :meth:`Lanczos.advance` and a random restart draw.
STEP_VECTORS = 2
#: Parameter-length vectors per Ritz vector whose residual is computed: y, C·y, C·y − θ·y.
RITZ_VECTORS = 3


def lanczos_bytes(
    size: int,
    columns: int,
    basis_vectors: int,
    dtype: torch.dtype,
    keep_products: bool = False,
    *,
    ritz_vectors: int = 0,
) -> int:
    """Bytes of parameter-length vectors a :class:`Lanczos` run holds at its peak.

    Args:
        size: P, the rows of a vector.
        columns: K, the processes per row (probe columns); the blocks of a run share rows.
        basis_vectors: Vectors kept per column: ``max_basis`` (bounded), ``steps + 1``
            (unbounded), 2 without reorthogonalisation.
        dtype: The working dtype.
        keep_products: Whether every product is kept too (doubles the basis).
        ritz_vectors: Ritz vectors assembled at the end to recompute residuals from kept
            products (top_k + bottom_k; 0 when the products are not kept).

    Returns:
        The bytes, counting the product handed to each step (the caller's matmat output) but
        not the matmat's own working memory.

    Example::

        >>> lanczos_bytes(1000, 1, 11, torch.float32)
        52000
    """
    per_column = basis_vectors * (2 if keep_products else 1) + STEP_VECTORS
    itemsize = torch.empty((), dtype=dtype).element_size()
    return itemsize * size * (columns * per_column + RITZ_VECTORS * ritz_vectors)


def basis_within(
    budget: int,
    size: int,
    columns: int,
    dtype: torch.dtype,
    *,
    keep_products: bool = False,
    ritz_vectors: int = 0,
) -> int:
    """The most basis vectors per column for which :func:`lanczos_bytes` fits ``budget``.

    Zero when not even the step's own vectors fit.

    Example::

        >>> basis_within(52000, 1000, 1, torch.float32)
        11
    """
    fixed = lanczos_bytes(size, columns, 0, dtype, keep_products, ritz_vectors=ritz_vectors)
    each = lanczos_bytes(size, columns, 1, dtype, keep_products) - lanczos_bytes(
        size, columns, 0, dtype, keep_products
    )
    return max(0, (budget - fixed) // each)


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
        self.order = torch.zeros(shape, dtype=torch.long)
        self.finished = torch.zeros(shape, dtype=torch.bool)
        self.thick_restarts = 0
        self.alphas: list[torch.Tensor] = []
        self.betas: list[torch.Tensor] = []
        self._restarted: torch.Tensor | None = None
        self._scale = torch.zeros(shape, dtype=torch.float64)
        # T of every process: diagonal, off-diagonal (row i to i+1, from row `head` on), and
        # the arrow coupling rows < head (kept Ritz vectors) to row `head`.
        self._diagonal = torch.zeros((*shape, 0), dtype=torch.float64)
        self._off = torch.zeros((*shape, 0), dtype=torch.float64)
        self._arrow = torch.zeros((*shape, 0), dtype=torch.float64)
        # Per row of T, a bound on what the relation C·Q = Q·T + β·q·eᵀ leaves out of C·q_i:
        # the Gram–Schmidt coefficients T does not hold, and the round-off of forming them.
        self._defect = torch.zeros((*shape, 0), dtype=torch.float64)
        self._head = torch.zeros(shape, dtype=torch.long)
        self._slabs: list[torch.Tensor] = []  # (K, n, P) each
        self._kept: list[torch.Tensor] = []  # the products, same layout
        self._steps = 0
        self._count = 1
        self._ensure(1)
        first = self._slot(self._slabs, 0)
        for _s, (a, b), k in self._processes():
            norm = float(torch.linalg.vector_norm(start[a:b, k]))
            if norm == 0:
                raise ValueError("a start vector is zero on some block")
            torch.div(start[a:b, k], norm, out=first[k, a:b])

    # -- state -----------------------------------------------------------------------------
    @property
    def basis(self) -> list[torch.Tensor]:
        """``q_1, q_2, …`` as ``(P, K)`` views (a finished process has zero columns).

        After a thick restart these are the kept Ritz vectors, then the newer vectors; without
        reorthogonalisation only the last two vectors are kept.
        """
        first = 0 if self.reorthogonalise else max(0, self._count - 2)
        return [self._slot(self._slabs, i).T for i in range(first, self._count)]

    @property
    def products(self) -> list[torch.Tensor]:
        """``C·q_1, C·q_2, …`` (when ``keep_products``), as ``(P, K)`` views."""
        if not self.keep_products:
            return []
        return [self._slot(self._kept, i).T for i in range(self._count - 1)]

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
        return self._slot(self._slabs, self._count - 1).T

    def advance(self, w: torch.Tensor) -> None:
        """Take the step with ``w = C·pending()`` computed elsewhere."""
        if self.reorthogonalise and self._capacity is not None and self._count >= self._capacity:
            self._thick_restart()
        j = self._count - 1
        self._ensure(j + 2)
        self._ensure_order(int(self.order.max()) + 1)
        if self.keep_products:
            _transposed(w, self._slot(self._kept, j))
        following = self._slot(self._slabs, j + 1)
        alphas = torch.zeros_like(self._scale)
        betas = torch.zeros_like(self._scale)
        fresh: list[torch.Tensor] = []  # one random draw per step, shared by every restart
        eps = torch.finfo(self.dtype).eps
        for s, (a, b), k in self._processes():
            target = following[k, a:b]
            if self.finished[s, k]:
                target.zero_()
                continue
            defect = 0.0
            if self.reorthogonalise:
                alpha, beta, defect = self._orthogonalise(w[a:b, k], target, s, k, a, b, j + 1)
            else:
                alpha, beta = self._recur(w[a:b, k], target, k, a, b, s)
            o = int(self.order[s, k])
            self.depth[s, k] += 1
            self.order[s, k] = o + 1
            self._scale[s, k] = max(float(self._scale[s, k]), abs(alpha) + beta)
            spanned = o + 1 >= self.segments.sizes[s]
            invariant = not spanned and beta <= BREAKDOWN * eps * float(self._scale[s, k])
            if spanned or invariant:
                beta = 0.0
            self._diagonal[s, k, o] = alpha
            self._off[s, k, o] = beta
            self._defect[s, k, o] = defect
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

    def _orthogonalise(
        self, w: torch.Tensor, target: torch.Tensor, s: int, k: int, a: int, b: int, count: int
    ) -> tuple[float, float, float]:
        """``target ← w`` orthogonalised against the first ``count`` vectors → (α, β, defect).

        First the recurrence's own terms (β·q_{j−1}, or right after a thick restart the
        arrow's σᵢ·yᵢ), written straight into ``target``, then α·q_j; these carry nearly all
        of w, so one classical Gram–Schmidt pass over the whole basis measures and removes
        what is left at working precision. A second pass runs only when that one removed more
        than 1 − 1/√2 of the norm (DGKS; the norm before it is ‖Qᵀx‖² + ‖x‖², Pythagoras).
        """
        j = count - 1
        size = float(torch.linalg.vector_norm(w))
        views = list(self._views(self._slabs, k, a, b, count))
        current = self._slot(self._slabs, j)[k, a:b]
        o, head = int(self.order[s, k]), int(self._head[s, k])
        if o > head:
            previous = self._slot(self._slabs, j - 1)[k, a:b]
            torch.add(w, previous, alpha=-float(self._off[s, k, o - 1]), out=target)
        elif head:
            kept = list(self._views(self._slabs, k, a, b, head))
            sigma = self._arrow[s, k, :head].to(self.dtype).to(self.device)
            _subtract(kept, [sigma[i : i + q.shape[0]] for i, q in kept], w, target)
        else:
            target.copy_(w)
        alpha = float(torch.dot(current, target))
        target.sub_(current, alpha=alpha)
        coefficients = _project(views, target, target)
        beta = float(torch.linalg.vector_norm(target))
        if beta < AGAIN * math.hypot(float(coefficients.norm()), beta):
            coefficients += _project(views, target, target)  # it cancelled: twice is enough
            beta = float(torch.linalg.vector_norm(target))
        # T keeps α + c_j; the other coefficients c_i (i ≠ j) are what loss of orthogonality
        # put there, and C·q_j = Q·T·e_j + β·q_{j+1} + Σ_{i≠j} c_i·q_i up to the round-off of
        # the subtractions (a few ε·‖w‖): together, this row's defect.
        others = torch.cat([coefficients[:j], coefficients[j + 1 :]]).double()
        left_out = float(torch.linalg.vector_norm(others))
        eps = float(torch.finfo(self.dtype).eps)
        return alpha + float(coefficients[j]), beta, left_out + ROUNDING * eps * size

    def _recur(
        self, w: torch.Tensor, target: torch.Tensor, column: int, a: int, b: int, s: int
    ) -> tuple[float, float]:
        """Three-term recurrence (Paige's order) with one local correction → (α, β).

        ``target`` is the slot of q_{j−1} (two slots in all): overwritten in place.
        """
        current = self._slot(self._slabs, self._count - 1)[column, a:b]
        o = int(self.order[s, column])
        if o > 0:
            target.mul_(-float(self._off[s, column, o - 1])).add_(w)
        else:
            target.copy_(w)
        alpha = float(torch.dot(current, target))
        target.sub_(current, alpha=alpha)
        correction = float(torch.dot(current, target))
        target.sub_(current, alpha=correction)
        return alpha + correction, float(torch.linalg.vector_norm(target))

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
        target.copy_(fresh[0][a:b, k])
        size = float(torch.linalg.vector_norm(target))
        views = list(self._views(self._slabs, k, a, b, count))
        for _ in range(2):
            _project(views, target, target)
        norm = float(torch.linalg.vector_norm(target))
        if norm <= BREAKDOWN * torch.finfo(self.dtype).eps * size:
            self.finished[s, k] = True  # nothing orthogonal is left (round-off): spanned
            target.zero_()
            return
        target.div_(norm)
        if self._restarted is None:
            self._restarted = torch.zeros_like(self.finished)
        self._restarted[s, k] = True

    # -- thick restart -------------------------------------------------------------------------
    def _keeps(self) -> tuple[int, int]:
        """How many of the largest and of the smallest Ritz pairs a thick restart keeps."""
        assert self._capacity is not None
        room = self._capacity - 2  # the kept vectors, the residual direction, one new one
        top = min(self.wanted[0], room)
        bottom = min(self.wanted[1], room - top)
        if top + bottom == 0:
            raise RuntimeError(
                f"the basis is full ({self._capacity} vectors) and this run keeps nothing "
                "through a thick restart (wanted=(0, 0))"
            )
        extra = (room - top - bottom) // 2
        if bottom == 0:
            return top + extra, 0
        if top == 0:
            return 0, bottom + extra
        return top + (extra + 1) // 2, bottom + extra // 2

    def _thick_restart(self) -> None:
        """Replace the full basis by kept Ritz vectors and the residual direction (Wu & Simon)."""
        top, bottom = self._keeps()
        kept = top + bottom
        last = self._count - 1  # the pending q_{m+1}
        for s, (a, b), k in self._processes():
            o = int(self.order[s, k])
            if o <= kept:
                continue  # a finished process with a small T: already compact
            theta, vectors = torch.linalg.eigh(self.projected(s, k))
            index = list(range(bottom)) + list(range(o - top, o))
            coefficients = vectors[:, index]
            sigma = float(self._off[s, k, o - 1]) * vectors[o - 1, index]
            self._compress(self._slabs, k, a, b, coefficients)
            self._slot(self._slabs, kept)[k, a:b].copy_(self._slot(self._slabs, last)[k, a:b])
            if self.keep_products:
                self._compress(self._kept, k, a, b, coefficients)
            defects = coefficients.abs().T @ self._defect[s, k, :o]  # ‖Σ_j s_ji·e_j‖ ≤ Σ|s_ji|·d_j
            self._diagonal[s, k].zero_()
            self._off[s, k].zero_()
            self._arrow[s, k].zero_()
            self._defect[s, k].zero_()
            self._defect[s, k, :kept] = defects
            self._diagonal[s, k, :kept] = theta[index]
            self._arrow[s, k, :kept] = sigma
            self._head[s, k] = kept
            self.order[s, k] = kept
        self._count = kept + 1
        self.thick_restarts += 1

    def _compress(
        self, slabs: list[torch.Tensor], column: int, a: int, b: int, coefficients: torch.Tensor
    ) -> None:
        """Slots ``0..r`` ← (slots ``0..d``)·coefficients on rows a:b, in place, chunk by chunk."""
        d, r = coefficients.shape
        coefficients = coefficients.to(self.dtype).to(self.device)
        rows = min(RESTART_ROWS, b - a)
        buffer = torch.empty((r, rows), dtype=self.dtype, device=self.device)  # one per call
        for first in range(a, b, rows):
            stop = min(b, first + rows)
            combined = buffer[:, : stop - first].zero_()
            for i, view in self._views(slabs, column, first, stop, d):
                combined.addmm_(coefficients[i : i + view.shape[0]].T, view)
            for i, view in self._views(slabs, column, first, stop, r):
                view.copy_(combined[i : i + view.shape[0]])

    # -- the small matrix and Ritz vectors -----------------------------------------------------
    def projected(self, block: int, column: int) -> torch.Tensor:
        """T of process (block, column): ``(d, d)`` float64 on the CPU, d its order.

        Tridiagonal, or after a thick restart an arrow (the kept Ritz values bordered by their
        couplings σ) followed by a tridiagonal; in both cases C·Q = Q·T + β·q·e_dᵀ.
        """
        d, head = int(self.order[block, column]), int(self._head[block, column])
        t = torch.diag(self._diagonal[block, column, :d])
        if d > head + 1:
            rows = torch.arange(head, d - 1)
            t[rows, rows + 1] = t[rows + 1, rows] = self._off[block, column, head : d - 1]
        if 0 < head < d:
            t[:head, head] = t[head, :head] = self._arrow[block, column, :head]
        return t

    tridiagonal = projected

    def last_beta(self, block: int, column: int) -> float:
        """β_d of process (block, column): the size of the residual direction q_{d+1}."""
        d = int(self.order[block, column])
        return float(self._off[block, column, d - 1]) if d else 0.0

    def residual_bounds(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """Bounds on ‖C·Q·s − Q·T·s‖ + ‖…‖: the Ritz residuals of process (block, column).

        For each column s of ``coefficients`` (unit eigenvectors of :meth:`projected`, so
        that T·s = θ·s), ‖C·y − θ·y‖ for y = Q·s is at most |β_d·s_d| (the recurrence's
        residual) plus Σᵢ|sᵢ|·defectᵢ (what T leaves out of each C·qᵢ, see
        :meth:`_orthogonalise`), as long as Q stays orthonormal, which full
        reorthogonalisation keeps to round-off. No product and no parameter-length vector:
        small-matrix arithmetic on the CPU, float64.
        """
        d = int(self.order[block, column])
        recurrence = (self.last_beta(block, column) * coefficients[d - 1]).abs()
        return recurrence + coefficients[:d].abs().T @ self._defect[block, column, :d]

    def vectors(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """``Q·S`` restricted to block: Ritz vectors of process (block, column) → ``(n_s, r)``.

        In the working dtype (the float64 coefficients are cast down).
        """
        if not self.reorthogonalise:
            raise ValueError("the basis was not kept (reorthogonalise=False): no Ritz vectors")
        return self._combine(self._slabs, block, column, coefficients)

    def images(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """``(C·Q)·S`` restricted to block, from the stored products (needs ``keep_products``)."""
        if not self.keep_products:
            raise ValueError("products were not kept")
        return self._combine(self._kept, block, column, coefficients)

    def _combine(
        self, slabs: list[torch.Tensor], block: int, column: int, coefficients: torch.Tensor
    ) -> torch.Tensor:
        a, b = self.segments.bounds[block]
        coefficients = coefficients.to(self.dtype).to(self.device)
        out = torch.zeros((b - a, coefficients.shape[1]), dtype=self.dtype, device=self.device)
        for i, view in self._views(slabs, column, a, b, coefficients.shape[0]):
            out.addmm_(view.T, coefficients[i : i + view.shape[0]])
        return out

    # -- storage -----------------------------------------------------------------------------
    def _processes(self) -> Iterator[tuple[int, tuple[int, int], int]]:
        for s, bounds in enumerate(self.segments.bounds):
            for k in range(self._columns):
                yield s, bounds, k

    def _ensure(self, needed: int) -> None:
        """Slabs for at least ``needed`` vectors (two slots in all without reorthogonalising)."""
        if not self.reorthogonalise:
            needed = min(needed, 2)
        held = sum(slab.shape[1] for slab in self._slabs)
        while held < needed:
            size = SLAB if self._capacity is None else min(SLAB, self._capacity - held)
            if size <= 0:
                raise RuntimeError("the basis is full")  # advance() restarts before this
            shape = (self._columns, size, self._rows)
            like = {"dtype": self.dtype, "device": self.device}
            self._slabs.append(torch.empty(shape, **like))
            if self.keep_products:
                self._kept.append(torch.empty(shape, **like))
            held += size

    def _ensure_order(self, needed: int) -> None:
        """Room for T of order ``needed`` in every process (grown by doubling: it is small)."""
        if self._diagonal.shape[-1] < needed:
            grow = max(needed, 2 * self._diagonal.shape[-1], SLAB) - self._diagonal.shape[-1]
            pad = torch.zeros((*self._scale.shape, grow), dtype=torch.float64)
            self._diagonal = torch.cat([self._diagonal, pad], dim=-1)
            self._off = torch.cat([self._off, pad], dim=-1)
            self._arrow = torch.cat([self._arrow, pad], dim=-1)
            self._defect = torch.cat([self._defect, pad], dim=-1)

    def _slot(self, slabs: list[torch.Tensor], index: int) -> torch.Tensor:
        """Vector ``index`` of every column: a ``(K, P)`` view."""
        if not self.reorthogonalise:
            index %= 2
        return slabs[index // SLAB][:, index % SLAB]

    def _views(
        self, slabs: list[torch.Tensor], column: int, a: int, b: int, count: int
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first index, (n, b − a) view)`` covering vectors ``0..count`` of one column."""
        for number, slab in enumerate(slabs):
            first = number * SLAB
            if first >= count:
                return
            yield first, slab[column, : min(slab.shape[1], count - first), a:b]


def _project(
    views: list[tuple[int, torch.Tensor]], x: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """One classical Gram–Schmidt pass: ``out ← x − Q·(Qᵀx)`` (two GEMVs per slab).

    ``out`` may be ``x``. Returns ``Qᵀx`` as float64 on the CPU (small).
    """
    coefficients = [torch.mv(q, x) for _, q in views]
    _subtract(views, coefficients, x, out)
    return torch.cat(coefficients).cpu().double()


def _subtract(
    views: list[tuple[int, torch.Tensor]],
    coefficients: list[torch.Tensor],
    x: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """``out ← x − Σ Qᵢ·cᵢ`` over the slabs' views (``out`` may be ``x``)."""
    for (_, q), c in zip(views, coefficients, strict=True):
        if out is x:
            out.addmv_(q.T, c, alpha=-1)
        else:
            torch.addmv(x, q.T, c, alpha=-1, out=out)
            x = out


def _transposed(w: torch.Tensor, out: torch.Tensor) -> None:
    """``out ← wᵀ`` for ``(P, K)`` → ``(K, P)``, column by column.

    ``out.copy_(w.T)`` takes a slow strided path, ten times slower even for one column.
    """
    for k in range(w.shape[1]):
        out[k].copy_(w[:, k])
