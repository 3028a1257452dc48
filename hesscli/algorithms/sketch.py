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
            y = matmat(rademacher(size, self.sketch, generator=generator, like=self._like))
            q, _ = torch.linalg.qr(y.double())
            z = matmat(q.to(dtype)).double()
            m = q.T @ z
            m = (m + m.T) / 2
            self.low_rank = 2 * (q * z).sum(dim=1) - ((q @ m) * q).sum(dim=1)
            self._q = q
            self.products += 2 * self.sketch

    def probe(self, count: int) -> torch.Tensor:
        """``count`` more probes → ``(P, count)`` float64 samples gᵢ·(Π⊥CΠ⊥g)ᵢ."""
        g = rademacher(self.size, count, generator=self.generator, like=self._like).double()
        deflated = self._deflate(g)
        image = self._deflate(self.matmat(deflated.to(self._like.dtype)).double())
        self.products += count
        return g * image

    def _deflate(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._q is None else x - self._q @ (self._q.T @ x)
