"""Deflated random probing: the shared core of the Hutch++ trace and the Diag++ diagonal.

Reference: Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic Trace Estimation" (2021);
Baston & Nakatsukasa, "Stochastic diagonal estimation" (Diag++, 2022).

A sketch Q = orth(C·S) of k random columns captures C's dominant eigen-directions (the outliers
of a network's Hessian). With Π = QQᵀ and Π⊥ = I − Π,

    C = ΠC + CΠ − ΠCΠ + Π⊥CΠ⊥,

and the first three terms are known exactly from Z = C·Q (k more products). Entry i of their
diagonal is 2·Σₖ Q_ik·Z_ik − Σₖ (QM)_ik·Q_ik with M = QᵀZ. The remainder Π⊥CΠ⊥ has a much
smaller norm; its diagonal is estimated with Rademacher probes g: E[g ∘ (Π⊥CΠ⊥g)] = diag(Π⊥CΠ⊥),
and Π⊥CΠ⊥g = Π⊥·C·(Π⊥g) costs one product. Summing entries over a block of rows gives that
block's trace from the same probes (the trace of the whole is the sum over blocks). With k = 0
this is plain Hutchinson (Bekas et al. 2007 for the diagonal).

Parameter-length work (the sketch, its QR, the deflation) runs in the working dtype of the
products: float64 copies of ``(P, k)`` matrices would cost more memory than the products
themselves on a real model. Only per-entry results (``low_rank``) are float64; in float64 runs
nothing changes.
"""

from __future__ import annotations

import torch

from hesscli.algorithms import Matmat


def rademacher(
    size: int, count: int, *, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """``(size, count)`` random ±1 entries, drawn on the CPU (reproducible), on ``like``'s device.

    The CPU draw keeps the same seed giving the same probes on every device.
    """
    signs = torch.randint(0, 2, (size, count), generator=generator, dtype=torch.int8)
    return (signs.to(like.device, like.dtype) * 2 - 1).contiguous()


class DeflatedProbing:
    """Exact low-rank part of diag(C) from a k-column sketch, then random probes of the rest.

    Args:
        matmat: ``(P, K) → (P, K)``, symmetric.
        size: P.
        sketch: k, the sketch columns (0 = plain Hutchinson); clipped to P.
        generator: CPU generator for the sketch and the probes.
        dtype: Dtype of the vectors handed to ``matmat``.
        device: Their device.
        columns: Most columns per ``matmat`` call while sketching (bounds the products'
            memory; the result does not depend on it).

    Attributes:
        low_rank: ``(P,)`` float64 diagonal of ΠC + CΠ − ΠCΠ (zeros when k = 0).
        products: Products spent so far (2k for the sketch, one per probe).
    """

    def __init__(
        self,
        matmat: Matmat,
        size: int,
        *,
        sketch: int,
        generator: torch.Generator | None,
        dtype: torch.dtype,
        device: torch.device,
        columns: int | None = None,
    ) -> None:
        self.matmat = matmat
        self.size = size
        self.generator = generator
        self._like = torch.empty(0, dtype=dtype, device=device)
        self.sketch = max(0, min(sketch, size))
        self.products = 0
        self.low_rank = torch.zeros(size, dtype=torch.float64, device=device)
        self._q: torch.Tensor | None = None
        if self.sketch:
            step = columns or self.sketch
            y = _chunked(
                matmat, rademacher(size, self.sketch, generator=generator, like=self._like), step
            )
            q, _ = torch.linalg.qr(y)
            del y
            z = _chunked(matmat, q, step)
            m = (q.T @ z).double()
            m = ((m + m.T) / 2).to(dtype)
            self.low_rank = (2 * (q * z).sum(dim=1)).double() - ((q @ m) * q).sum(dim=1).double()
            self._q = q
            self.products += 2 * self.sketch

    def probe(self, count: int) -> torch.Tensor:
        """``count`` more probes → ``(P, count)`` samples gᵢ·(Π⊥CΠ⊥g)ᵢ, in the working dtype."""
        g = rademacher(self.size, count, generator=self.generator, like=self._like)
        image = self._deflate(self.matmat(self._deflate(g)))
        self.products += count
        return g * image

    def _deflate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._q is None else x - self._q @ (self._q.T @ x)


def _chunked(matmat: Matmat, columns: torch.Tensor, step: int) -> torch.Tensor:
    """``matmat(columns)``, ``step`` columns per call, into one preallocated result."""
    if columns.shape[1] <= step:
        return matmat(columns)
    out = torch.empty_like(columns)
    for first in range(0, columns.shape[1], step):
        out[:, first : first + step] = matmat(columns[:, first : first + step])
    return out
