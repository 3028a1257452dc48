"""The small matrix T of every Lanczos process: its storage, its thick restart, its error bounds.

A Lanczos run keeps, per (block, column) process, the projection T of the operator onto its
basis, C·Q = Q·T + β·q·eᵀ: tridiagonal, or after a thick restart (Wu & Simon 2000) an arrow,
the kept Ritz values bordered by their couplings σ, followed by the tridiagonal of the steps
that follow. All of it is float64 on the CPU and small, so it lives apart from the
parameter-length vectors (:mod:`.lanczos_slabs`) and from the stepping (:mod:`.lanczos`);
it also carries, per row, a bound on what T leaves out of C·qᵢ, from which the Ritz residuals
are bounded without a product.
"""

from __future__ import annotations

import torch

#: Rows of T allocated at least at once (T grows by doubling: it is small).
ROWS = 16


def restart_keeps(capacity: int, wanted: tuple[int, int]) -> tuple[int, int]:
    """How many of the largest and of the smallest Ritz pairs a thick restart keeps.

    At least ``wanted`` (as far as the basis of ``capacity`` vectors allows), and up to half
    of the remaining room more, split between the two ends as they are asked.
    """
    room = capacity - 2  # the kept vectors, the residual direction, one new one
    top = min(wanted[0], room)
    bottom = min(wanted[1], room - top)
    if top + bottom == 0:
        raise RuntimeError(
            f"the basis is full ({capacity} vectors) and this run keeps nothing "
            "through a thick restart (wanted=(0, 0))"
        )
    extra = (room - top - bottom) // 2
    if bottom == 0:
        return top + extra, 0
    if top == 0:
        return 0, bottom + extra
    return top + (extra + 1) // 2, bottom + extra // 2


class Projected:
    """T of every (block, column) process, float64 on the CPU.

    Args:
        shape: ``(S, K)``, the blocks and columns of the run.

    Attributes:
        order: ``(S, K)`` order of each process's T (the rows filled so far).
        head: ``(S, K)`` rows before the tridiagonal part: the Ritz vectors kept by the last
            thick restart (0 before any).
        scale: ``(S, K)`` running estimate of ‖T‖ (max of |α| + β over the steps).
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.order = torch.zeros(shape, dtype=torch.long)
        self.head = torch.zeros(shape, dtype=torch.long)
        self.scale = torch.zeros(shape, dtype=torch.float64)
        # Diagonal, off-diagonal (row i to i+1, from row `head` on), and the arrow coupling
        # rows < head (kept Ritz vectors) to row `head`.
        self.diagonal = torch.zeros((*shape, 0), dtype=torch.float64)
        self.off = torch.zeros((*shape, 0), dtype=torch.float64)
        self.arrow = torch.zeros((*shape, 0), dtype=torch.float64)
        # Per row of T, a bound on what the relation C·Q = Q·T + β·q·eᵀ leaves out of C·q_i:
        # the Gram–Schmidt coefficients T does not hold, and the round-off of forming them.
        self.defect = torch.zeros((*shape, 0), dtype=torch.float64)

    def reserve(self, needed: int) -> None:
        """Room for T of order ``needed`` in every process (grown by doubling: it is small)."""
        if self.diagonal.shape[-1] < needed:
            grow = max(needed, 2 * self.diagonal.shape[-1], ROWS) - self.diagonal.shape[-1]
            pad = torch.zeros((*self.scale.shape, grow), dtype=torch.float64)
            self.diagonal = torch.cat([self.diagonal, pad], dim=-1)
            self.off = torch.cat([self.off, pad], dim=-1)
            self.arrow = torch.cat([self.arrow, pad], dim=-1)
            self.defect = torch.cat([self.defect, pad], dim=-1)

    def append(self, s: int, k: int, alpha: float, beta: float, defect: float) -> None:
        """Row ``order`` of process (s, k) ← (α, β, defect); the order grows by one."""
        o = int(self.order[s, k])
        self.diagonal[s, k, o] = alpha
        self.off[s, k, o] = beta
        self.defect[s, k, o] = defect
        self.order[s, k] = o + 1

    def couplings(self, s: int, k: int) -> tuple[float | None, torch.Tensor | None]:
        """What couples the newest row of T of process (s, k) to the rows before it.

        ``(β, None)`` inside a tridiagonal part, ``(None, σ)`` right after a thick restart
        (the arrow's couplings to the kept Ritz vectors), ``(None, None)`` for the first row.
        """
        o, head = int(self.order[s, k]), int(self.head[s, k])
        if o > head:
            return float(self.off[s, k, o - 1]), None
        if head:
            return None, self.arrow[s, k, :head]
        return None, None

    def matrix(self, block: int, column: int) -> torch.Tensor:
        """T of process (block, column): ``(d, d)`` float64 on the CPU, d its order."""
        d, head = int(self.order[block, column]), int(self.head[block, column])
        t = torch.diag(self.diagonal[block, column, :d])
        if d > head + 1:
            rows = torch.arange(head, d - 1)
            t[rows, rows + 1] = t[rows + 1, rows] = self.off[block, column, head : d - 1]
        if 0 < head < d:
            t[:head, head] = t[head, :head] = self.arrow[block, column, :head]
        return t

    def last_beta(self, block: int, column: int) -> float:
        """β_d of process (block, column): the size of the residual direction q_{d+1}."""
        d = int(self.order[block, column])
        return float(self.off[block, column, d - 1]) if d else 0.0

    def residual_bounds(self, block: int, column: int, coefficients: torch.Tensor) -> torch.Tensor:
        """|β_d·s_d| + Σᵢ|sᵢ|·defectᵢ for each column s of ``coefficients`` (see Lanczos)."""
        d = int(self.order[block, column])
        recurrence = (self.last_beta(block, column) * coefficients[d - 1]).abs()
        return recurrence + coefficients[:d].abs().T @ self.defect[block, column, :d]

    def thick_restart(self, s: int, k: int, top: int, bottom: int) -> torch.Tensor:
        """T of process (s, k) ← the arrow of its ``top`` largest and ``bottom`` smallest pairs.

        Returns the ``(d, top + bottom)`` eigenvectors of the old T that were kept: the basis
        is to be replaced by (old basis)·them. With S those columns and Θ their Ritz values,
        C·Y = Y·Θ + q_{d+1}·σᵀ for σ = β_d·(last row of S); the kept rows' defects are
        ‖Σ_j s_ji·e_j‖ ≤ Σ_j |s_ji|·d_j.
        """
        kept = top + bottom
        o = int(self.order[s, k])
        theta, vectors = torch.linalg.eigh(self.matrix(s, k))
        index = list(range(bottom)) + list(range(o - top, o))
        coefficients = vectors[:, index]
        sigma = float(self.off[s, k, o - 1]) * vectors[o - 1, index]
        defects = coefficients.abs().T @ self.defect[s, k, :o]
        self.diagonal[s, k].zero_()
        self.off[s, k].zero_()
        self.arrow[s, k].zero_()
        self.defect[s, k].zero_()
        self.defect[s, k, :kept] = defects
        self.diagonal[s, k, :kept] = theta[index]
        self.arrow[s, k, :kept] = sigma
        self.head[s, k] = kept
        self.order[s, k] = kept
        return coefficients
