"""Extreme eigenvalues (largest algebraic, most negative) by Lanczos, with honest residuals.

Method: Lanczos with full reorthogonalisation (:mod:`.lanczos`) from one random start vector per
block; after each step the Ritz pairs (θᵢ, yᵢ) of T are checked. The residual of a Ritz pair is
‖C·yᵢ − θᵢ·yᵢ‖; the recurrence gives it for free as |β_d·sᵢ[d]|, and the run stops once every
requested pair has residual ≤ ``tol``·‖C‖ (‖C‖ estimated by the largest |θ|) — a stopping rule
on accuracy, not an iteration count. The tolerance is relative to ‖C‖, so an eigenvalue much
smaller than ‖C‖ (often the most negative one) is known to ``tol``·‖C‖ absolutely.

Repeated eigenvalues: one Krylov space holds one copy of each. When a block's Krylov space
closes (it then restarts, see :mod:`.lanczos`), the block is run until it is spanned, so every
copy is found (last-layer blocks of an MSE loss, I ⊗ A, do this). A repeated eigenvalue whose
Krylov space never closes within ``max_steps`` is reported once — a limit of single-vector
Lanczos. The reported residuals are then **recomputed** from actual
products: C·yᵢ = (C·Q)·sᵢ from the stored products, or by one more matmat when they were not
kept. By Bauer–Fike some eigenvalue of C lies within the residual of each reported value, and
the error is typically far smaller (≈ residual²/gap).

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.lanczos import Lanczos
from hesscli.algorithms.segments import Segments

#: Steps beyond top_k + bottom_k taken before convergence is trusted (guards against
#: a Ritz value that has converged while a larger eigenvalue has not yet appeared).
EXTRA_STEPS = 5


@dataclass(frozen=True)
class Eigenpair:
    """One Ritz value with its recomputed residual ‖C·y − θ·y‖ and its unit Ritz vector y.

    ``vector`` holds the block's rows only (float64).
    """

    value: float
    residual: float
    converged: bool
    vector: torch.Tensor | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Extremes:
    """The extreme eigenvalues of one block.

    Attributes:
        top: Largest first.
        bottom: Most negative first.
        steps: Lanczos steps (products) this block took.
        scale: ‖C‖ estimate the tolerance is relative to.
        exhausted: The Krylov space became invariant: the values are exact to round-off.
    """

    top: tuple[Eigenpair, ...]
    bottom: tuple[Eigenpair, ...]
    steps: int
    scale: float
    exhausted: bool


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
) -> list[Extremes]:
    """Top-k and bottom-k eigenvalues of each diagonal block of a symmetric operator.

    Args:
        matmat: ``(P, K) → (P, K)``; block-diagonal over ``blocks`` when they are given.
        size: P.
        top_k: Largest eigenvalues wanted per block.
        bottom_k: Most negative eigenvalues wanted per block.
        tol: Stop when every wanted residual is ≤ ``tol``·‖C_block‖.
        max_steps: Cap on Lanczos steps (default: the largest block size); unconverged values
            are reported with ``converged=False``.
        blocks: ``(start, stop)`` row blocks (layers); default one block of everything.
        generator: Source of the random start vector (CPU generator).
        dtype: Dtype of the vectors handed to ``matmat``.
        device: Their device.
        keep_products: Keep every product (twice the memory of the basis) so that residuals
            are recomputed without another matmat.
        on_step: Called as ``on_step(steps, max_steps)`` after each step.

    Returns:
        One :class:`Extremes` per block.
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
    )
    while search.wants_more():
        search.run.step()
        if on_step is not None:
            on_step(search.run.steps, search.limit)
    return search.result()


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
    ) -> None:
        if top_k < 0 or bottom_k < 0 or top_k + bottom_k == 0:
            raise ValueError("ask for at least one eigenvalue (top_k or bottom_k ≥ 1)")
        device = torch.device(device)
        segments = Segments.of(size, blocks, device=device)
        self.limit = max(segments.sizes) if max_steps is None else max(1, min(max_steps, size))
        self.top_k, self.bottom_k, self.tol = top_k, bottom_k, tol
        start = torch.randn(size, 1, generator=generator, dtype=torch.float64).to(device, dtype)
        self.run = Lanczos(
            matmat, start, segments=segments, keep_products=keep_products, generator=generator
        )

    def wants_more(self) -> bool:
        """Whether another step is needed: not converged, not exhausted, within the limit."""
        run = self.run
        if run.steps >= self.limit or run.done:
            return False
        if run.steps < min(self.top_k + self.bottom_k + EXTRA_STEPS, self.limit):
            return True
        return not _all_converged(run, self.top_k, self.bottom_k, self.tol)

    def result(self) -> list[Extremes]:
        """One :class:`Extremes` per block, with residuals recomputed from products."""
        return extremes_of(self.run, self.top_k, self.bottom_k, self.tol)


def _ritz(run: Lanczos, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values (ascending) and eigenvectors of T for one block."""
    return torch.linalg.eigh(run.tridiagonal(block, 0))


def _wanted(count: int, top_k: int, bottom_k: int) -> tuple[list[int], list[int]]:
    """Indices (into ascending Ritz values) of the top (descending) and bottom (ascending)."""
    top = list(range(count - 1, max(count - top_k, 0) - 1, -1))
    bottom = list(range(min(bottom_k, count)))
    return top, bottom


def _all_converged(run: Lanczos, top_k: int, bottom_k: int, tol: float) -> bool:
    for block in range(run.segments.count):
        if bool(run.finished[block, 0]):
            continue
        if run.restarted(block, 0):
            # Its Krylov space closed: the block may hold repeated eigenvalues, of which each
            # Krylov space sees one copy. Only spanning the block makes the count certain.
            return False
        theta, s = _ritz(run, block)
        top, bottom = _wanted(len(theta), top_k, bottom_k)
        estimate = (run.last_beta(block, 0) * s[-1, top + bottom]).abs()
        if bool((estimate > tol * theta.abs().max()).any()):
            return False
    return True


def extremes_of(run: Lanczos, top_k: int, bottom_k: int, tol: float) -> list[Extremes]:
    """Extreme Ritz pairs of column 0 of every block of ``run``, residuals from products.

    Any Lanczos run will do (a density's probes too); without kept products this costs one
    more matmat.
    """
    chosen: list[tuple[torch.Tensor, list[int], list[int], torch.Tensor]] = []
    for block in range(run.segments.count):
        theta, s = _ritz(run, block)
        top, bottom = _wanted(len(theta), top_k, bottom_k)
        chosen.append((theta, top, bottom, s))
    residuals = (
        _stored_residuals(run, chosen) if run.keep_products else _recomputed_residuals(run, chosen)
    )
    results = []
    for block, (theta, top, bottom, _s) in enumerate(chosen):
        scale = float(theta.abs().max())
        found = residuals[block]
        pairs = {
            i: Eigenpair(float(theta[i]), r, r <= tol * scale, y) for i, (r, y) in found.items()
        }
        results.append(
            Extremes(
                top=tuple(pairs[i] for i in top),
                bottom=tuple(pairs[i] for i in bottom),
                steps=int(run.depth[block, 0]),
                scale=scale,
                exhausted=bool(run.finished[block, 0]),
            )
        )
    return results


Found = dict[int, tuple[float, torch.Tensor]]


def _residuals(theta: torch.Tensor, index: list[int], y: torch.Tensor, cy: torch.Tensor) -> Found:
    """‖C·y − θ·y‖ / ‖y‖ per column, with the normalised vectors."""
    norms = torch.linalg.vector_norm(y, dim=0)
    r = torch.linalg.vector_norm(cy - y * theta[index].to(y.device), dim=0) / norms
    y = y / norms
    return {i: (float(r[c]), y[:, c]) for c, i in enumerate(index)}


def _stored_residuals(
    run: Lanczos, chosen: list[tuple[torch.Tensor, list[int], list[int], torch.Tensor]]
) -> list[Found]:
    out = []
    for block, (theta, top, bottom, s) in enumerate(chosen):
        index = sorted(set(top + bottom))
        y = run.vectors(block, 0, s[:, index])
        out.append(_residuals(theta, index, y, run.images(block, 0, s[:, index])))
    return out


def _recomputed_residuals(
    run: Lanczos, chosen: list[tuple[torch.Tensor, list[int], list[int], torch.Tensor]]
) -> list[Found]:
    """One more block product: column c holds, in every block, that block's c-th Ritz vector."""
    indices = [sorted(set(top + bottom)) for _theta, top, bottom, _s in chosen]
    width = max(len(i) for i in indices)
    sample = run.basis[0]
    ys = sample.new_zeros(sample.shape[0], width)
    for block, (_theta, _top, _bottom, s) in enumerate(chosen):
        start, stop = run.segments.bounds[block]
        ys[start:stop, : len(indices[block])] = run.vectors(block, 0, s[:, indices[block]]).to(
            ys.dtype
        )
    cys = run.matmat(ys)
    out = []
    for block, (theta, _top, _bottom, _s) in enumerate(chosen):
        start, stop = run.segments.bounds[block]
        n = len(indices[block])
        y, cy = ys[start:stop, :n].double(), cys[start:stop, :n].double()
        out.append(_residuals(theta, indices[block], y, cy))
    return out
