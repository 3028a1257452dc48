"""Extreme eigenvalues (largest algebraic, most negative) by Lanczos, with honest error bounds.

Method: Lanczos with full reorthogonalisation (:mod:`.lanczos`) from one random start vector per
block; after each step the Ritz pairs (θᵢ, yᵢ) of T are checked (:mod:`.ritz`). Each reported
value carries

- its **residual** ‖C·yᵢ − θᵢ·yᵢ‖: recomputed from the stored products when they were kept,
  else the bound the recurrence gives without any product, |β_d·sᵢ[d]| plus what T leaves
  out of each step (:meth:`~.lanczos.Lanczos.residual_bounds`). By Bauer–Fike some eigenvalue
  of C lies within it: a guarantee.
- its **error**, the distance to that eigenvalue: ‖r‖²/gap (Kato–Temple; Saad, *Numerical
  Methods for Large Eigenvalue Problems*, §3.2), where the gap is the distance to the nearest
  other Ritz value less that value's own residual, and never more than ‖r‖. The gap is seen
  through the Ritz values, so this is an estimate, trusted only once the residual is below
  √tol·‖C‖ (a settled Ritz value); above that the error is the residual itself.

The run stops once every requested value's error is ≤ ``tol``·‖C‖ (‖C‖ estimated by the
largest |θ|) — a stopping rule on the accuracy of the eigenvalues, not an iteration count. An
eigenvalue converges quadratically faster than its Ritz vector, so this takes fewer products
than asking the residual itself to be that small (on all-MiniLM-L6-v2, λmax to 1e-4 after 8
steps where the residual needs 11). The tolerance is relative to ‖C‖, so an eigenvalue much
smaller than ‖C‖ (often the most negative one) is known to ``tol``·‖C‖ absolutely.

Repeated eigenvalues: one Krylov space holds one copy of each. When a block's Krylov space
closes (it then restarts, see :mod:`.lanczos`), the block is run until it is spanned, so every
copy is found (last-layer blocks of an MSE loss, I ⊗ A, do this); a basis bounded below the
block's size cannot span it and runs to ``max_steps``, collecting a copy per closure. A
repeated eigenvalue whose Krylov space never closes within ``max_steps`` is reported once — a
limit of single-vector Lanczos.

Memory: the basis holds one parameter-length vector per step (twice that with the products).
``max_basis`` bounds it: when the basis is full the run thick-restarts (Wu & Simon 2000, see
:mod:`.lanczos`), keeping the wanted Ritz vectors — the top_k largest and bottom_k smallest —
and a few more; T becomes an arrow followed by a tridiagonal and the residual bounds stay
statements about the current Ritz pairs.
A restart costs products (the run converges in more steps), never accuracy.
:func:`~hesscli.algorithms.lanczos_memory.lanczos_bytes` tells what a run will hold.

Example (prescribed spectrum)::

    >>> import torch
    >>> q, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64,
    ...                        generator=torch.Generator().manual_seed(0)))
    >>> spectrum = torch.linspace(-1, 10, 50, dtype=torch.float64)
    >>> A = q @ torch.diag(spectrum) @ q.T
    >>> result, = extreme_eigenvalues(lambda V: A @ V, 50, top_k=2, bottom_k=1, tol=1e-10,
    ...                               generator=torch.Generator().manual_seed(0),
    ...                               dtype=torch.float64)
    >>> [round(p.value, 8) for p in result.top], round(result.bottom[0].value, 8)
    ([10.0, 9.7755102], -1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.lanczos import Lanczos
from hesscli.algorithms.ritz import Extremes, all_converged, extremes_of
from hesscli.algorithms.segments import Segments

#: Steps beyond top_k + bottom_k taken before convergence is trusted (guards against
#: a Ritz value that has converged while a larger eigenvalue has not yet appeared).
EXTRA_STEPS = 5


def extreme_eigenvalues(
    matmat: Matmat,
    size: int,
    *,
    top_k: int = 5,
    bottom_k: int = 0,
    tol: float = 1e-6,
    max_steps: int | None = None,
    blocks: Sequence[tuple[int, int]] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    keep_products: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    max_basis: int | None = None,
    hint: torch.Tensor | None = None,
) -> list[Extremes]:
    """Top-k and bottom-k eigenvalues of each diagonal block of a symmetric operator.

    Args:
        matmat: ``(P, K) → (P, K)``; block-diagonal over ``blocks`` when they are given.
        size: P.
        top_k: Largest eigenvalues wanted per block.
        bottom_k: Most negative eigenvalues wanted per block.
        tol: Stop when every wanted residual is ≤ ``tol``·‖C_block‖.
        max_steps: Cap on Lanczos steps (default: the largest block size; at most P unless
            ``max_basis`` makes the run restart); unconverged values are reported with
            ``converged=False``.
        blocks: ``(start, stop)`` row blocks (layers); default one block of everything.
        generator: Source of the random start vector (CPU generator).
        dtype: Dtype of the vectors handed to ``matmat``.
        device: Their device.
        keep_products: Keep every product (twice the memory of the basis) so that residuals
            are recomputed without another matmat.
        on_step: Called as ``on_step(steps, max_steps)`` after each step.
        max_basis: Most basis vectors (of length P) the run holds; fewer than ``max_steps + 1``
            makes it thick-restart when the basis is full. At least ``top_k + bottom_k + 2``.
            ``None``: as many as the steps need.
        hint: A ``(P,)`` direction believed to hold much of the wanted eigenvectors (the
            gradient, for a trained network's top eigenvalues). The start vector is then the
            random one plus the hint, each of unit length in every block: the Krylov space
            holds both, so no eigenvector is missed that a random start would find, and the
            errors are judged a posteriori as always; the run only converges sooner.

    Returns:
        One :class:`Extremes` per block.

    Raises:
        ValueError: When no eigenvalue is asked for, or ``max_basis`` cannot hold the wanted
            Ritz vectors and a new direction.
    """
    search = ExtremeSearch(
        matmat,
        size,
        top_k=top_k,
        bottom_k=bottom_k,
        tol=tol,
        max_steps=max_steps,
        blocks=blocks,
        generator=generator,
        dtype=dtype,
        device=device,
        keep_products=keep_products,
        max_basis=max_basis,
        hint=hint,
    )
    while search.wants_more():
        search.run.step()
        if on_step is not None:
            on_step(search.run.steps, search.limit)
    return search.result()


def _add_hint(start: torch.Tensor, hint: torch.Tensor, blocks: Sequence[tuple[int, int]]) -> None:
    """``start ← start/‖start‖ + hint/‖hint‖`` block by block (where the hint is usable)."""
    for a, b in blocks:
        size = float(torch.linalg.vector_norm(hint[a:b]))
        if size > 0 and math.isfinite(size):
            start[a:b].div_(float(torch.linalg.vector_norm(start[a:b]))).add_(
                hint[a:b], alpha=1 / size
            )


class ExtremeSearch:
    """The state of :func:`extreme_eigenvalues`, for drivers that batch several runs' products.

    ``run`` is the :class:`Lanczos` run; step it (or ``advance`` it with products computed
    elsewhere) while :meth:`wants_more`, then read :meth:`result`. The arguments are those of
    :func:`extreme_eigenvalues`; the start vector is drawn here, so the same generator state
    gives the same run whichever driver steps it.
    """

    def __init__(
        self,
        matmat: Matmat,
        size: int,
        *,
        top_k: int = 5,
        bottom_k: int = 0,
        tol: float = 1e-6,
        max_steps: int | None = None,
        blocks: Sequence[tuple[int, int]] | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        keep_products: bool = True,
        max_basis: int | None = None,
        hint: torch.Tensor | None = None,
    ) -> None:
        if top_k < 0 or bottom_k < 0 or top_k + bottom_k == 0:
            raise ValueError("ask for at least one eigenvalue (top_k or bottom_k ≥ 1)")
        device = torch.device(device)
        segments = Segments.of(size, blocks, device=device)
        self.limit = max(segments.sizes) if max_steps is None else max(1, min(max_steps, size))
        self.top_k, self.bottom_k, self.tol = top_k, bottom_k, tol
        capacity = self.limit + 1  # what the steps can use: allocate no more
        if max_basis is not None and max_basis < capacity:
            if max_basis < top_k + bottom_k + 2:
                raise ValueError(
                    f"max_basis={max_basis} cannot hold the {top_k + bottom_k} wanted Ritz "
                    f"vectors, the residual direction and a new one (need ≥ "
                    f"{top_k + bottom_k + 2})"
                )
            capacity = max_basis
            if max_steps is not None:  # restarted, a run may need more products than rows
                self.limit = max(1, max_steps)
        # Drawn on the CPU in the working dtype: the same generator gives the same vector on
        # every device, and no float64 copy of a parameter-length vector is made.
        start = torch.randn(size, 1, generator=generator, dtype=dtype).to(device)
        if hint is not None:
            _add_hint(start[:, 0], hint.to(device=device, dtype=dtype), blocks or [(0, size)])
        self.run = Lanczos(
            matmat,
            start,
            segments=segments,
            keep_products=keep_products,
            generator=generator,
            max_basis=capacity,
            wanted=(top_k, bottom_k),
        )

    def wants_more(self) -> bool:
        """Whether another step is needed: not converged, not exhausted, within the limit."""
        run = self.run
        if run.steps >= self.limit or run.done:
            return False
        if run.steps < min(self.top_k + self.bottom_k + EXTRA_STEPS, self.limit):
            return True
        return not all_converged(run, self.top_k, self.bottom_k, self.tol)

    def result(self) -> list[Extremes]:
        """One :class:`Extremes` per block, with residuals recomputed from products."""
        return extremes_of(self.run, self.top_k, self.bottom_k, self.tol)
