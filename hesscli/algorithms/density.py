"""Eigenvalue density by stochastic Lanczos quadrature (SLQ), with error bars over probes.

References: Golub & Meurant, "Matrices, Moments and Quadrature" (1994); Lin, Saad & Yang,
"Approximating spectral densities of large matrices" (SIAM Review 2016); Ghorbani, Krishnan &
Xiao, "An investigation into neural net optimization via Hessian eigenvalue density" (2019).

For a unit vector q, the measure μ_q = Σᵢ (qᵀuᵢ)²·δ(λᵢ) of a symmetric C has moments qᵀCʲq. The
m-step Lanczos tridiagonal T from q gives its m-node Gauss quadrature: nodes θₖ (eigenvalues of
T) and weights τₖ (squared first components of T's eigenvectors), exact for the moments
j ≤ 2m − 1. With q = z/√P for a Rademacher z, E[μ_q] = (1/P)·Σᵢ δ(λᵢ) — the eigenvalue density.
K probes are averaged; every derived number (the density on a grid smoothed by a Gaussian of
width σ, the mass below a threshold, moments) is a mean over probes with the standard error of
their spread. Per-block (per-layer) densities run one process per block and probe (see
:class:`~hesscli.algorithms.lanczos.Lanczos`), in the same products.

Memory. With full reorthogonalisation every probe keeps its m basis vectors: m × P × K numbers.
``max_basis`` smaller than m + 1 switches to the bounded mode: the plain three-term recurrence
(with a local correction), two vectors per probe whatever m. The quadrature stays valid without
reorthogonalisation: finite-precision Lanczos is exact Lanczos on a nearby larger problem
(Greenbaum 1989), its Gauss quadrature still matches the moments qᵀCʲq for j ≤ 2m − 1 up to
round-off (Knizhnerman 1996), and a converged eigenvalue that reappears as a "ghost" Ritz value
splits its weight between the copies rather than adding any, so the density, the moments and
the mass below a threshold keep their meaning (Lin, Saad & Yang, SIAM Review 2016, on Lanczos
without reorthogonalisation for densities of states; Papyan 2019, "The full spectrum of deepnet
Hessians at scale", for SLQ on networks with tens of millions of parameters). What is lost:
individual Ritz values no longer come with a basis, so no eigenvector or recomputed residual
(:func:`~hesscli.algorithms.eigen.extremes_of` refuses such a run), and a ghost may repeat an
outlier among the nodes.

Example (a prescribed spectrum: half the eigenvalues are negative)::

    >>> import torch
    >>> A = torch.diag(torch.linspace(-1, 1, 200, dtype=torch.float64))
    >>> (q,) = spectral_quadrature(lambda V: A @ V, 200, probes=8, steps=30,
    ...                            generator=torch.Generator().manual_seed(0),
    ...                            dtype=torch.float64)
    >>> value, stderr = mass_below(q, 0.0)
    >>> abs(value - 0.5) < 4 * stderr + 0.02
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.lanczos import Lanczos
from hesscli.algorithms.segments import Segments
from hesscli.algorithms.sketch import rademacher

#: Default smoothing width as a fraction of the quadrature nodes' span.
SIGMA_FRACTION = 1 / 200
#: The grid reaches this many σ beyond the outermost nodes.
GRID_MARGIN = 5.0


@dataclass(frozen=True)
class Quadrature:
    """Each probe's Gauss quadrature of one block's spectral measure.

    Attributes:
        nodes: ``(K, m)`` float64 Ritz values per probe (ascending).
        weights: ``(K, m)`` float64 weights per probe, each row summing to 1.
        residuals: ``(K, m)`` |β_m·sₖ[m]|, the residual ‖Cy − θy‖ of each Ritz pair.
        size: Rows of the block (P), to turn fractions into counts and means into traces.
        depths: Valid nodes per probe (a process that spans its block early has fewer; the
            rest of its row is zero-weight padding).
        reorthogonalised: Whether the Lanczos basis was kept orthogonal (``False`` in the
            bounded mode: the nodes may hold ghost copies that share one eigenvalue's weight).
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    residuals: torch.Tensor
    size: int
    depths: tuple[int, ...]
    reorthogonalised: bool = True

    @property
    def probes(self) -> int:
        """K."""
        return int(self.nodes.shape[0])

    @property
    def steps(self) -> int:
        """m, the Lanczos steps (nodes) per probe."""
        return int(self.nodes.shape[1])


class DensitySearch:
    """SLQ as a stepping state, for drivers that batch several runs' products in one pass.

    Step ``run`` (or ``advance`` it) while :meth:`wants_more`, then read :meth:`result`.
    The Rademacher probes are drawn here, so the same generator state gives the same run.

    Args:
        matmat: ``(P, K) → (P, K)``; block-diagonal over ``blocks`` when they are given.
        size: P.
        probes: K probe vectors (columns), per block.
        steps: m Lanczos steps per probe (fewer for a block smaller than m: it is spanned).
        blocks: ``(start, stop)`` row blocks (layers); default one block of everything.
        generator: CPU generator for the probes (and restarts).
        dtype: Dtype of the vectors handed to ``matmat``.
        device: Their device.
        max_basis: Most vectors (of length P) per probe the run may hold; fewer than the
            ``steps + 1`` that full reorthogonalisation keeps switches to the bounded mode
            (two per probe, no reorthogonalisation). ``None``: full reorthogonalisation.
    """

    def __init__(
        self,
        matmat: Matmat,
        size: int,
        *,
        probes: int,
        steps: int,
        blocks: Sequence[tuple[int, int]] | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        max_basis: int | None = None,
    ) -> None:
        if probes < 1 or steps < 1:
            raise ValueError(f"need at least one probe and one step, got {probes} and {steps}")
        if max_basis is not None and max_basis < 2:
            raise ValueError(f"max_basis must hold at least 2 vectors per probe, got {max_basis}")
        device = torch.device(device)
        segments = Segments.of(size, blocks, device=device)
        self.limit = min(steps, max(segments.sizes))
        full = max_basis is None or max_basis >= self.limit + 1
        like = torch.empty(0, dtype=dtype, device=device)
        start = rademacher(size, probes, generator=generator, like=like)
        self.run = Lanczos(
            matmat,
            start,
            segments=segments,
            generator=generator,
            max_basis=self.limit + 1 if full else 2,
            wanted=(0, 0),  # a quadrature must never be thick-restarted
            reorthogonalise=full,
        )

    def wants_more(self) -> bool:
        """Whether another step is needed (``steps`` not reached, some block not spanned)."""
        return self.run.steps < self.limit and not self.run.done

    def result(self) -> list[Quadrature]:
        """One :class:`Quadrature` per block."""
        run = self.run
        out = []
        for block, size in enumerate(run.segments.sizes):
            rows = [_gauss(run, block, k) for k in range(run.depth.shape[1])]
            depth = max(len(r[0]) for r in rows)
            nodes, weights, residuals = (
                torch.stack([_padded(r[i], depth) for r in rows]) for i in range(3)
            )
            depths = tuple(len(r[0]) for r in rows)
            out.append(Quadrature(nodes, weights, residuals, size, depths, run.reorthogonalise))
        return out


def spectral_quadrature(
    matmat: Matmat,
    size: int,
    *,
    probes: int = 8,
    steps: int = 80,
    blocks: Sequence[tuple[int, int]] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    max_basis: int | None = None,
) -> list[Quadrature]:
    """SLQ nodes and weights of C (or of each diagonal block): ``probes`` × ``steps`` products.

    The arguments are those of :class:`DensitySearch`.
    """
    search = DensitySearch(
        matmat,
        size,
        probes=probes,
        steps=steps,
        blocks=blocks,
        generator=generator,
        dtype=dtype,
        device=device,
        max_basis=max_basis,
    )
    while search.wants_more():
        search.run.step()
    return search.result()


def _gauss(run: Lanczos, block: int, probe: int) -> tuple[torch.Tensor, ...]:
    """Nodes, weights and Ritz residuals of one process's tridiagonal."""
    theta, s = torch.linalg.eigh(run.projected(block, probe))
    residual = (run.last_beta(block, probe) * s[-1]).abs()
    return theta, s[0].square(), residual


def _padded(values: torch.Tensor, depth: int) -> torch.Tensor:
    """Pad with zero-weight entries (a process that finished early has fewer nodes)."""
    out = values.new_zeros(depth)
    out[: values.shape[0]] = values
    return out


def _mean_and_stderr(per_probe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the probe axis (0) and its standard error (inf with a single probe)."""
    count = per_probe.shape[0]
    mean = per_probe.mean(dim=0)
    if count < 2:
        return mean, torch.full_like(mean, math.inf)
    return mean, per_probe.std(dim=0, unbiased=True) / math.sqrt(count)


def mass_below(quadrature: Quadrature, threshold: float) -> tuple[float, float]:
    """Fraction of the eigenvalues below ``threshold``, and its standard error over probes.

    This is the quadrature's own step sum, Σ_{θₖ < t} τₖ; :func:`mass_bracket` bounds what
    the quadrature cannot resolve.
    """
    below = (quadrature.weights * (quadrature.nodes < threshold)).sum(dim=1)
    mean, stderr = _mean_and_stderr(below[:, None])
    return float(mean[0]), float(stderr[0])


def mass_bracket(quadrature: Quadrature, threshold: float) -> tuple[float, float]:
    """Bounds on the expected fraction below ``threshold`` that hold whatever the spectrum.

    Chebyshev–Markov–Stieltjes: for Gauss nodes θ₁ < … < θₘ and θⱼ < t ≤ θⱼ₊₁, the measure of
    (−∞, t) lies in [Σ_{k<j} τₖ, Σ_{k≤j+1} τₖ]: the step sum minus the weight of the last node
    below t, plus the weight of the first node at or above it. Returned: both bounds averaged
    over the probes (the expected mass lies between their expectations).
    """
    weights = quadrature.weights
    below = quadrature.nodes < threshold
    inside = (weights * below).sum(dim=1)
    last_below = torch.where(below & (weights > 0), quadrature.nodes, -math.inf).argmax(dim=1)
    first_above = torch.where(~below & (weights > 0), quadrature.nodes, math.inf).argmin(dim=1)
    rows = torch.arange(weights.shape[0])
    low = inside - torch.where(below.any(dim=1), weights[rows, last_below], 0.0)
    high = inside + torch.where((~below).any(dim=1), weights[rows, first_above], 0.0)
    return float(low.clamp_min(0).mean()), float(high.clamp_max(1).mean())


def moment(quadrature: Quadrature, power: int) -> tuple[float, float]:
    """(1/P)·Tr(Cʲ) estimated from the probes (exact per probe for j ≤ 2m − 1), ± stderr."""
    per_probe = (quadrature.weights * quadrature.nodes.pow(power)).sum(dim=1)
    mean, stderr = _mean_and_stderr(per_probe[:, None])
    return float(mean[0]), float(stderr[0])


def span(quadrature: Quadrature) -> tuple[float, float]:
    """Smallest and largest node carrying weight (the support seen by the probes)."""
    nodes = quadrature.nodes[quadrature.weights > 0]
    return float(nodes.min()), float(nodes.max())


def default_sigma(quadrature: Quadrature) -> float:
    """:data:`SIGMA_FRACTION` of the nodes' span (or of their scale, if they coincide)."""
    low, high = span(quadrature)
    width = high - low
    if width <= 0:
        width = max(abs(low), abs(high), 1.0)
    return SIGMA_FRACTION * width


def grid_for(quadrature: Quadrature, sigma: float, points: int) -> torch.Tensor:
    """``points`` evenly spaced λ reaching :data:`GRID_MARGIN`·σ beyond the outermost nodes."""
    low, high = span(quadrature)
    margin = GRID_MARGIN * sigma
    return torch.linspace(low - margin, high + margin, points, dtype=torch.float64)


def smoothed(
    quadrature: Quadrature, grid: torch.Tensor, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian-smoothed density on ``grid`` (integrates to 1) and its standard error.

    Each probe's measure Σₖ τₖ·δ(θₖ) is convolved with N(0, σ²); the mean over probes is the
    estimate, their spread gives the standard error at every grid point.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    grid = grid.to(torch.float64)
    offsets = (grid[None, None, :] - quadrature.nodes[:, :, None]) / sigma
    kernel = torch.exp(-0.5 * offsets.square()) / (sigma * math.sqrt(2 * math.pi))
    per_probe = (quadrature.weights[:, :, None] * kernel).sum(dim=1)
    return _mean_and_stderr(per_probe)
