"""Symmetry of the computed curvature: the check that catches silently dropped derivatives.

Exact curvature is symmetric, whatever the model (ReLU kinks included), so uᵀ(Cv) = vᵀ(Cu)
for any two columns. Agreement between differentiation routes cannot catch both routes being
wrong together, as when a custom ``autograd.Function`` backward is ``once_differentiable`` and
torch silently drops its second derivative; the asymmetry of the result does.

Two ways to run it:

- :func:`symmetry_defect` on two random probe columns and their products (the route check on a
  slice of the first micro-batch, :mod:`.route_check`);
- :class:`FirstColumns` on the first two columns the operator computes anyway, so that the
  default route costs no product beyond those the algorithm asked for. Lanczos' first two
  vectors make a strong pair: uᵀCv is of the size of ‖Cu‖, not a random projection of it.
"""

from __future__ import annotations

import torch

from hesscli.engine.functional import Params
from hesscli.errors import NumericalError


def agreement_tolerance(dtype: torch.dtype) -> float:
    """Relative difference two exact computations may show from round-off alone: √ε."""
    return float(torch.finfo(dtype).eps) ** 0.5


def symmetry_defect(block: Params, product: Params) -> float:
    """|uᵀ(Cv) − vᵀ(Cu)| relative to ‖C‖, from two random columns u, v and their products.

    Dot products are taken in float64 over working-dtype products (no parameter-length
    float64 copies); for random u, v the value is about ‖C − Cᵀ‖_F/‖C‖_F.
    """

    def dot(x: dict[str, torch.Tensor], i: int, y: dict[str, torch.Tensor], j: int) -> float:
        return sum(float(torch.sum(x[n][i] * y[n][j], dtype=torch.float64)) for n in x)

    u_norm, v_norm = dot(block, 0, block, 0) ** 0.5, dot(block, 1, block, 1) ** 0.5
    size = sum(t[0].numel() for t in block.values())
    rms = (u_norm * v_norm / size) ** 0.5
    scale = (dot(product, 0, product, 0) + dot(product, 1, product, 1)) ** 0.5 * rms
    gap = abs(dot(block, 0, product, 1) - dot(block, 1, product, 0))
    return gap / scale if scale > 0 else 0.0


def pair_defect(u: torch.Tensor, cu: torch.Tensor, v: torch.Tensor, cv: torch.Tensor) -> float:
    """|uᵀ(Cv) − vᵀ(Cu)| / (‖u‖‖Cv‖ + ‖v‖‖Cu‖): at most 1 by Cauchy–Schwarz, 0 if symmetric."""

    def dot(x: torch.Tensor, y: torch.Tensor) -> float:
        # Working dtype: a float32 dot's error (~1e-4 relative) is far below the threshold.
        return float(torch.dot(x, y))

    scale = dot(u, u) ** 0.5 * dot(cv, cv) ** 0.5 + dot(v, v) ** 0.5 * dot(cu, cu) ** 0.5
    gap = abs(dot(u, cv) - dot(v, cu))
    return gap / scale if scale > 0 else 0.0


def too_large(defect: float, dtype: torch.dtype, error: float = 0.0) -> bool:
    """Whether ``defect`` exceeds what round-off (and a route's own ``error``) explains."""
    return defect > 10 * max(agreement_tolerance(dtype), error)


def asymmetry_error(kind: str, route: str, defect: float, where: str) -> NumericalError:
    """The one-line refusal of a curvature that is not symmetric."""
    return NumericalError(
        f"the {kind} that {route} computes is not symmetric (defect {defect:.1e} {where}), "
        "so torch drops part of the second derivatives: some operator's backward is not "
        "differentiable (e.g. a custom autograd.Function marked @once_differentiable)",
        "make that backward differentiable, or compute with plain PyTorch operations",
    )


#: Combined columns closer to parallel than this (|cos|) make a pair that checks nothing.
_PARALLEL = 0.9
#: Columns after which a check that found no usable pair stops trying (and holding memory).
_GIVE_UP = 64


class FirstColumns:
    """The symmetry check on the columns an operator computes anyway, from its first passes.

    Two combinations are accumulated over the columns of one block (the first block fed):
    u = x₀ + Σₖ aₖxₖ and v = x₁ + Σₖ bₖxₖ (k ≥ 2, fixed pseudo-random signs), with their
    products. Two columns give the plain pair (x₀, x₁); many columns in one pass (unit columns
    of a dense matrix, probe blocks) are mixed, so that an asymmetry outside the first two
    coordinates is not missed. :meth:`judge` then gives |uᵀCv − vᵀCu| relative to its
    Cauchy–Schwarz bound. Costs no product, and four vectors of the block's length until the
    end of the pass where the second column arrives.
    """

    def __init__(self) -> None:
        self._block: object = None
        self._sums: list[torch.Tensor] = []  # u, Cu, v, Cv
        self._count = 0
        self._signs = torch.Generator().manual_seed(0)
        self.defect: float | None = None
        self.gave_up = False

    @property
    def done(self) -> bool:
        """Whether the check has been judged, or given up (only parallel columns came)."""
        return self.defect is not None or self.gave_up

    def feed(self, block: object, columns: torch.Tensor, products: torch.Tensor) -> None:
        """Add one request's ``(rows, K)`` columns and products (summed over the data set)."""
        if self.done or columns.shape[1] == 0:
            return
        if self._count == 0:
            self._block = block
        elif block is not self._block:
            return
        for k in range(columns.shape[1]):
            x, cx = columns[:, k], products[:, k]
            if self._count < 2:
                self._sums += [x.detach().clone(), cx.detach().clone()]
            else:
                a, b = (torch.randint(0, 2, (2,), generator=self._signs) * 2 - 1).tolist()
                for total, term, sign in zip(self._sums, (x, cx, x, cx), (a, a, b, b), strict=True):
                    total.add_(term, alpha=sign)
            self._count += 1

    def judge(self) -> float | None:
        """The defect once two non-parallel combinations exist (then forgets them), else None."""
        if self.done or self._count < 2:
            return self.defect
        u, cu, v, cv = self._sums

        def dot(x: torch.Tensor, y: torch.Tensor) -> float:
            return float(torch.dot(x, y))

        norms = dot(u, u) ** 0.5 * dot(v, v) ** 0.5
        if norms == 0 or abs(dot(u, v)) > _PARALLEL * norms:
            if self._count >= _GIVE_UP:
                self.gave_up, self._sums = True, []
            return None  # wait for more columns to mix in
        if not (bool(torch.isfinite(cu).all()) and bool(torch.isfinite(cv).all())):
            self.defect = 0.0  # NaN/Inf curvature is reported where the products blow up
        else:
            self.defect = pair_defect(u, cu, v, cv)
        self._sums = []
        return self.defect
