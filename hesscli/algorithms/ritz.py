"""Ritz pairs of a Lanczos run read as eigenvalues: residuals, errors and convergence.

Each Ritz value θᵢ of a process's T carries its **residual** ‖C·yᵢ − θᵢ·yᵢ‖ (recomputed from
kept products, else the recurrence's bound) and its **error**, ‖r‖²/gap once settled
(:func:`eigenvalue_errors`); :mod:`.eigen` stops when the wanted values' errors meet the
tolerance (:func:`all_converged`), and :func:`extremes_of` reads the result off any run that
kept its basis, a density's probes included. The reasoning behind both is in :mod:`.eigen`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hesscli.algorithms.lanczos import Lanczos


@dataclass(frozen=True)
class Eigenpair:
    """One Ritz value θ with its residual ‖C·y − θ·y‖, its error and its unit Ritz vector y.

    ``residual`` bounds the distance to the nearest eigenvalue (Bauer–Fike); ``error`` is the
    tighter estimate ‖r‖²/gap (see the module docstring), never above ``residual``.
    ``vector`` holds the block's rows only, in the working dtype, when the products were kept
    (else ``None``: the residual came from the recurrence, no Ritz vector was formed).
    """

    value: float
    residual: float
    error: float
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


def ritz_decomposition(run: Lanczos, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values (ascending) and eigenvectors of T for one block."""
    return torch.linalg.eigh(run.projected(block, 0))


def wanted_indices(count: int, top_k: int, bottom_k: int) -> tuple[list[int], list[int]]:
    """Indices (into ascending Ritz values) of the top (descending) and bottom (ascending)."""
    top = list(range(count - 1, max(count - top_k, 0) - 1, -1))
    bottom = list(range(min(bottom_k, count)))
    return top, bottom


def all_converged(run: Lanczos, top_k: int, bottom_k: int, tol: float) -> bool:
    """Whether every unfinished block's wanted values have errors within ``tol``·‖C‖."""
    for block in range(run.segments.count):
        if bool(run.finished[block, 0]):
            continue
        if run.restarted(block, 0):
            # Its Krylov space closed: the block may hold repeated eigenvalues, of which each
            # Krylov space sees one copy. Only spanning the block makes the count certain; a
            # bounded basis that cannot span it keeps collecting copies until the step limit.
            return False
        theta, s = ritz_decomposition(run, block)
        top, bottom = wanted_indices(len(theta), top_k, bottom_k)
        scale = float(theta.abs().max())
        errors = eigenvalue_errors(theta, run.residual_bounds(block, 0, s), tol * scale)
        if bool((errors[top + bottom] > tol * scale).any()):
            return False
    return True


def eigenvalue_errors(
    theta: torch.Tensor, residuals: torch.Tensor, tolerance: float
) -> torch.Tensor:
    """The error of each Ritz value: ‖r‖²/gap once ‖r‖ ≤ √(tolerance·‖C‖), else ‖r‖.

    The gap of θᵢ is min over k ≠ i of |θᵢ − θ_k| − r_k: the nearest other Ritz value, moved
    towards θᵢ by its own residual. A gap that is not positive gives the residual.

    Args:
        theta: All Ritz values of one process (float64).
        residuals: Their residuals (bounds or recomputed), same order.
        tolerance: The absolute accuracy asked for (``tol``·‖C‖).

    Example (two well separated values; the first has settled)::

        >>> eigenvalue_errors(torch.tensor([1.0, 3.0]), torch.tensor([1e-3, 0.5]), 1e-4)
        tensor([6.6667e-07, 5.0000e-01], dtype=torch.float64)
    """
    theta, residuals = theta.double(), residuals.double()
    distance = (theta[:, None] - theta[None, :]).abs() - residuals[None, :]
    distance.fill_diagonal_(float("inf"))
    gap = distance.min(dim=1).values if len(theta) > 1 else torch.full_like(theta, float("inf"))
    scale = float(theta.abs().max()) if len(theta) else 0.0
    settled = residuals <= (tolerance * scale) ** 0.5
    quadratic = torch.where(gap > 0, residuals.square() / gap.clamp_min(1e-300), residuals)
    return torch.where(settled, torch.minimum(quadratic, residuals), residuals)


def extremes_of(run: Lanczos, top_k: int, bottom_k: int, tol: float) -> list[Extremes]:
    """Extreme Ritz pairs of column 0 of every block of ``run``, with residuals and errors.

    Any Lanczos run that kept its basis will do (a density's probes too). Residuals are
    recomputed from the stored products when the run kept them, else bounded from the
    recurrence (no product either way).

    Raises:
        ValueError: When the run kept no basis (``reorthogonalise=False``): its Ritz values
            may include ghost copies.
    """
    if not run.reorthogonalise:
        raise ValueError(
            "the Lanczos run kept no basis (reorthogonalise=False): its Ritz values may repeat "
            "as ghosts; use an ExtremeSearch for eigenvalues"
        )
    results = []
    for block in range(run.segments.count):
        theta, s = ritz_decomposition(run, block)
        top, bottom = wanted_indices(len(theta), top_k, bottom_k)
        index = sorted(set(top + bottom))
        residuals = run.residual_bounds(block, 0, s)
        vectors: dict[int, torch.Tensor] = {}
        if run.keep_products:
            y = run.vectors(block, 0, s[:, index])
            for i, (r, v) in _stored_residuals(
                theta, index, y, run.images(block, 0, s[:, index])
            ).items():
                residuals[i], vectors[i] = r, v
        scale = float(theta.abs().max())
        errors = eigenvalue_errors(theta, residuals, tol * scale)

        limit = tol * scale
        pairs = {
            i: Eigenpair(
                float(theta[i]),
                float(residuals[i]),
                float(errors[i]),
                float(errors[i]) <= limit,
                vectors.get(i),
            )
            for i in index
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


def _stored_residuals(
    theta: torch.Tensor, index: list[int], y: torch.Tensor, cy: torch.Tensor
) -> dict[int, tuple[float, torch.Tensor]]:
    """‖C·y − θ·y‖ / ‖y‖ per column from kept products, with the normalised vectors."""
    norms = torch.linalg.vector_norm(y, dim=0)
    shifts = theta[index].to(y.dtype).to(y.device)
    r = (torch.linalg.vector_norm(cy - y * shifts, dim=0) / norms).cpu().double()
    y = y / norms
    return {i: (float(r[c]), y[:, c]) for c, i in enumerate(index)}
