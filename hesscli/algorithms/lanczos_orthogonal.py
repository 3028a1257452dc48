"""Forming the next Lanczos vector: the recurrence, then Gram–Schmidt against the stored basis.

Each step of every process turns its product w = C·q_j into q_{j+1}: the recurrence's own
terms first (β·q_{j−1}, or right after a thick restart the arrow's σᵢ·yᵢ), then α·q_j, then
classical Gram–Schmidt over the whole basis (Daniel, Gragg, Kaufman & Stewart 1976: a second
pass only when the first cancelled much of the vector, "twice is enough", Parlett 1980 §6.9),
or, without reorthogonalisation, the three-term recurrence with one local correction. When a
Krylov space closes, a random draw orthogonalised against the basis continues the process.
These kernels work on one process's rows of the :class:`~.lanczos_slabs.Slabs` in the working
dtype and hand back only scalars, so the bookkeeping stays in :mod:`.lanczos`.
"""

from __future__ import annotations

import math

import torch

from hesscli.algorithms.lanczos_slabs import Slabs

#: β below this multiple of ε·‖T‖ ends a process (its Krylov space is invariant).
BREAKDOWN = 100.0
#: A second Gram–Schmidt pass when the first left less than this fraction of the norm (DGKS).
AGAIN = 1 / math.sqrt(2)
#: Round-off of forming one reorthogonalised step, in units of ε times the norms involved
#: (a few subtractions and a normalisation; see :meth:`~.lanczos.Lanczos.residual_bounds`).
ROUNDING = 8.0


def orthogonalise(
    basis: Slabs,
    w: torch.Tensor,
    target: torch.Tensor,
    column: int,
    a: int,
    b: int,
    count: int,
    *,
    previous: float | None,
    sigma: torch.Tensor | None,
) -> tuple[float, float, float]:
    """``target ← w`` orthogonalised against the first ``count`` vectors → (α, β, defect).

    First the recurrence's own terms (β·q_{j−1}, or right after a thick restart the
    arrow's σᵢ·yᵢ), written straight into ``target``, then α·q_j; these carry nearly all
    of w, so one classical Gram–Schmidt pass over the whole basis measures and removes
    what is left at working precision. A second pass runs only when that one removed more
    than 1 − 1/√2 of the norm (DGKS; the norm before it is ‖Qᵀx‖² + ‖x‖², Pythagoras).

    Args:
        basis: The stored vectors; q_j is vector ``count − 1``.
        w: C·q_j on rows a:b of ``column``.
        target: Where q_{j+1} (unnormalised) goes: rows a:b of ``column`` of a free slot.
        column: The process's column.
        a: First row of the process's block.
        b: End of the process's block.
        count: Vectors of the basis to orthogonalise against (q_1 … q_j).
        previous: β_{j−1}, the coupling of q_j to q_{j−1} inside the tridiagonal part
            (``None`` when q_j starts it).
        sigma: The arrow's couplings σ of q_j to the kept Ritz vectors, when q_j is the
            first vector after a thick restart (``None`` otherwise).
    """
    j = count - 1
    size = float(torch.linalg.vector_norm(w))
    views = list(basis.views(column, a, b, count))
    current = basis.slot(j)[column, a:b]
    if previous is not None:
        torch.add(w, basis.slot(j - 1)[column, a:b], alpha=-previous, out=target)
    elif sigma is not None:
        kept = list(basis.views(column, a, b, sigma.shape[0]))
        sigma = sigma.to(basis.dtype).to(basis.device)
        subtract_combination(kept, [sigma[i : i + q.shape[0]] for i, q in kept], w, target)
    else:
        target.copy_(w)
    alpha = float(torch.dot(current, target))
    target.sub_(current, alpha=alpha)
    coefficients = project_out(views, target, target)
    beta = float(torch.linalg.vector_norm(target))
    if beta < AGAIN * math.hypot(float(coefficients.norm()), beta):
        coefficients += project_out(views, target, target)  # it cancelled: twice is enough
        beta = float(torch.linalg.vector_norm(target))
    # T keeps α + c_j; the other coefficients c_i (i ≠ j) are what loss of orthogonality
    # put there, and C·q_j = Q·T·e_j + β·q_{j+1} + Σ_{i≠j} c_i·q_i up to the round-off of
    # the subtractions (a few ε·‖w‖): together, this row's defect.
    others = torch.cat([coefficients[:j], coefficients[j + 1 :]]).double()
    left_out = float(torch.linalg.vector_norm(others))
    eps = float(torch.finfo(basis.dtype).eps)
    return alpha + float(coefficients[j]), beta, left_out + ROUNDING * eps * size


def recur(
    basis: Slabs,
    w: torch.Tensor,
    target: torch.Tensor,
    column: int,
    a: int,
    b: int,
    count: int,
    *,
    previous: float | None,
) -> tuple[float, float]:
    """Three-term recurrence (Paige's order) with one local correction → (α, β).

    ``target`` is the slot of q_{j−1} (two slots in all): overwritten in place. q_j is
    vector ``count − 1``; ``previous`` is β_{j−1} (``None`` at the first step).
    """
    current = basis.slot(count - 1)[column, a:b]
    if previous is not None:
        target.mul_(-previous).add_(w)
    else:
        target.copy_(w)
    alpha = float(torch.dot(current, target))
    target.sub_(current, alpha=alpha)
    correction = float(torch.dot(current, target))
    target.sub_(current, alpha=correction)
    return alpha + correction, float(torch.linalg.vector_norm(target))


def orthogonal_draw(
    basis: Slabs, draw: torch.Tensor, target: torch.Tensor, column: int, a: int, b: int, count: int
) -> bool:
    """``target`` ← ``draw`` made a unit vector orthogonal to the first ``count`` vectors.

    Two Gram–Schmidt passes. False (and ``target`` zeroed) when nothing orthogonal is left
    but round-off: the basis spans the block.
    """
    target.copy_(draw)
    size = float(torch.linalg.vector_norm(target))
    views = list(basis.views(column, a, b, count))
    for _ in range(2):
        project_out(views, target, target)
    norm = float(torch.linalg.vector_norm(target))
    if norm <= BREAKDOWN * torch.finfo(basis.dtype).eps * size:
        target.zero_()
        return False
    target.div_(norm)
    return True


def project_out(
    views: list[tuple[int, torch.Tensor]], x: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """One classical Gram–Schmidt pass: ``out ← x − Q·(Qᵀx)`` (two GEMVs per slab).

    ``out`` may be ``x``. Returns ``Qᵀx`` as float64 on the CPU (small).
    """
    coefficients = [torch.mv(q, x) for _, q in views]
    subtract_combination(views, coefficients, x, out)
    return torch.cat(coefficients).cpu().double()


def subtract_combination(
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
