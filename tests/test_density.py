"""Stochastic Lanczos quadrature against exact eigenvalues of dense symmetric matrices.

What SLQ promises, each tested where it holds exactly and where it holds statistically:
- per probe, the quadrature reproduces the moments qᵀAʲq for j ≤ 2m − 1 (exact);
- averaged over probes, the moments estimate Tr(Aʲ)/P within their standard errors;
- the mass below any t lies in the Chebyshev–Markov–Stieltjes bracket, per probe (exact);
- the fraction of eigenvalues in an interval, and the smoothed curve, match the exact histogram;
- a block no larger than the step count is spanned: nodes are the exact eigenvalues.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hesscli.algorithms.density import (
    DensitySearch,
    Quadrature,
    default_sigma,
    grid_for,
    mass_below,
    mass_bracket,
    moment,
    smoothed,
    spectral_quadrature,
)
from hesscli.algorithms.sketch import rademacher

F64 = torch.float64


def _matrix(eigenvalues: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = eigenvalues.shape[0]
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=F64))
    return q @ torch.diag(eigenvalues) @ q.T


def _bulk_and_outliers(seed: int = 0, size: int = 400) -> torch.Tensor:
    """A network-like spectrum: a bulk around 0 (a third negative) and a few large outliers."""
    g = torch.Generator().manual_seed(seed)
    bulk = torch.randn(size - 10, generator=g, dtype=F64) * 0.3 + 0.15
    outliers = torch.tensor([4.0, 6.0, 9.0, 15.0, 30.0] * 2, dtype=F64)
    return torch.cat([bulk, outliers])


def _quadrature(a: torch.Tensor, probes: int, steps: int, seed: int = 1) -> Quadrature:
    (q,) = spectral_quadrature(
        lambda v: a @ v,
        a.shape[0],
        probes=probes,
        steps=steps,
        generator=torch.Generator().manual_seed(seed),
        dtype=F64,
    )
    return q


def test_each_probe_reproduces_its_moments_up_to_2m_minus_1() -> None:
    eigenvalues = _bulk_and_outliers()
    a = _matrix(eigenvalues, 0)
    size, probes, steps = a.shape[0], 4, 12
    quadrature = _quadrature(a, probes, steps, seed=3)
    # the probes are the first draw of the generator: redraw them
    z = rademacher(size, probes, generator=torch.Generator().manual_seed(3), like=a)
    q = z / math.sqrt(size)
    scale = float(eigenvalues.abs().max())
    power = q.clone()
    for j in range(1, 2 * steps):
        power = a @ power / scale
        exact = (q * power).sum(dim=0)  # qᵀ(A/s)ʲq per probe
        quad = (quadrature.weights * (quadrature.nodes / scale).pow(j)).sum(dim=1)
        torch.testing.assert_close(quad, exact, rtol=1e-9, atol=1e-12)
    assert quadrature.weights.sum(dim=1).sub(1).abs().max() < 1e-12


def test_moments_estimate_traces_of_powers() -> None:
    eigenvalues = _bulk_and_outliers()
    quadrature = _quadrature(_matrix(eigenvalues, 0), probes=32, steps=40)
    for j in (1, 2, 3):
        value, stderr = moment(quadrature, j)
        exact = float(eigenvalues.pow(j).mean())
        assert abs(value - exact) < 4 * stderr, (j, value, exact, stderr)
        assert stderr < 0.2 * abs(exact)  # the error bar is informative, not vacuous


@pytest.mark.parametrize("threshold", [-0.3, 0.0, 0.2, 1.0, 5.0])
def test_mass_below_matches_the_exact_histogram(threshold: float) -> None:
    eigenvalues = _bulk_and_outliers()
    quadrature = _quadrature(_matrix(eigenvalues, 0), probes=24, steps=100)
    exact = float((eigenvalues < threshold).double().mean())
    value, stderr = mass_below(quadrature, threshold)
    low, high = mass_bracket(quadrature, threshold)
    assert low - 4 * stderr <= exact <= high + 4 * stderr, (low, exact, high, stderr)
    assert abs(value - exact) <= (high - low) + 4 * stderr
    assert high - low < 0.12  # 100 steps resolve the bulk to a few percent


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    size=st.integers(20, 120),
    steps=st.integers(2, 25),
    threshold=st.floats(-2.0, 2.0),
)
def test_bracket_holds_per_probe_for_any_spectrum(
    seed: int, size: int, steps: int, threshold: float
) -> None:
    """Chebyshev–Markov–Stieltjes is a theorem, not a statistic: check it probe by probe."""
    g = torch.Generator().manual_seed(seed)
    eigenvalues = torch.randn(size, generator=g, dtype=F64).sinh()  # heavy tails
    basis, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=F64))
    a = basis @ torch.diag(eigenvalues) @ basis.T
    quadrature = _quadrature(a, probes=1, steps=steps, seed=seed)
    q = rademacher(size, 1, generator=torch.Generator().manual_seed(seed), like=a)[:, 0]
    weights = (basis.T @ q).square() / size  # the probe's exact measure
    exact = float(weights[eigenvalues < threshold].sum())
    low, high = mass_bracket(quadrature, threshold)
    assert low - 1e-9 <= exact <= high + 1e-9, (low, exact, high)


def test_small_block_is_spanned_and_exact() -> None:
    eigenvalues = torch.linspace(-2.0, 3.0, 30, dtype=F64)
    quadrature = _quadrature(_matrix(eigenvalues, 5), probes=3, steps=80)
    assert quadrature.steps == 30
    for k in range(3):
        nodes = quadrature.nodes[k, : quadrature.depths[k]]
        torch.testing.assert_close(torch.sort(nodes).values, eigenvalues, rtol=0, atol=1e-10)


def test_smoothed_density_matches_the_smoothed_exact_spectrum() -> None:
    eigenvalues = _bulk_and_outliers()
    quadrature = _quadrature(_matrix(eigenvalues, 0), probes=24, steps=80)
    sigma = 20 * default_sigma(quadrature)  # a resolution the quadrature can deliver
    grid = grid_for(quadrature, sigma, 2000)
    density, stderr = smoothed(quadrature, grid, sigma)
    offsets = (grid[None, :] - eigenvalues[:, None]) / sigma
    exact = (torch.exp(-0.5 * offsets.square()) / (sigma * math.sqrt(2 * math.pi))).mean(dim=0)
    step = float(grid[1] - grid[0])
    assert abs(float(density.sum()) * step - 1) < 1e-3  # integrates to 1
    l1 = float((density - exact).abs().sum()) * step
    assert l1 < 0.1, l1
    inside = float(((density - exact).abs() <= 4 * stderr + 1e-3).double().mean())
    assert inside > 0.95, inside


def test_blocks_get_their_own_densities_from_one_run() -> None:
    left, right = torch.linspace(-1, 1, 50, dtype=F64), torch.linspace(2, 5, 70, dtype=F64)
    a = torch.block_diag(_matrix(left, 1), _matrix(right, 2))
    blocks = spectral_quadrature(
        lambda v: a @ v,
        120,
        probes=6,
        steps=60,
        blocks=[(0, 50), (50, 120)],
        generator=torch.Generator().manual_seed(0),
        dtype=F64,
    )
    assert [b.size for b in blocks] == [50, 70]
    assert blocks[0].nodes[:, : blocks[0].depths[0]].max() <= 1 + 1e-9
    assert blocks[1].nodes[:, : blocks[1].depths[0]].min() >= 2 - 1e-9
    for block, spectrum in zip(blocks, (left, right), strict=True):
        value, stderr = moment(block, 2)
        assert abs(value - float(spectrum.square().mean())) < 4 * stderr + 1e-9


def test_bad_arguments_are_refused() -> None:
    a = torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match="probe"):
        spectral_quadrature(lambda v: a @ v, 4, probes=0, steps=3, dtype=F64)
    quadrature = _quadrature(a, probes=2, steps=3)
    with pytest.raises(ValueError, match="sigma"):
        smoothed(quadrature, torch.zeros(3, dtype=F64), 0.0)


# -- bounded mode: no reorthogonalisation, two vectors per probe ---------------------------------
def _bounded(a: torch.Tensor, probes: int, steps: int, seed: int = 1) -> Quadrature:
    """SLQ keeping two vectors per probe; checks that the run never holds more."""
    search = DensitySearch(
        lambda v: a @ v,
        a.shape[0],
        probes=probes,
        steps=steps,
        max_basis=2,
        generator=torch.Generator().manual_seed(seed),
        dtype=F64,
    )
    while search.wants_more():
        search.run.step()
        assert len(search.run.basis) <= 2
    (quadrature,) = search.result()
    assert not quadrature.reorthogonalised and quadrature.steps == steps
    return quadrature


def test_bounded_mode_still_reproduces_the_moments_of_each_probe() -> None:
    eigenvalues = _bulk_and_outliers()
    a = _matrix(eigenvalues, 0)
    size, probes, steps = a.shape[0], 4, 12
    quadrature = _bounded(a, probes, steps, seed=3)
    z = rademacher(size, probes, generator=torch.Generator().manual_seed(3), like=a)
    q = z / math.sqrt(size)
    scale = float(eigenvalues.abs().max())
    power = q.clone()
    for j in range(1, 2 * steps):
        power = a @ power / scale
        exact = (q * power).sum(dim=0)
        quad = (quadrature.weights * (quadrature.nodes / scale).pow(j)).sum(dim=1)
        torch.testing.assert_close(quad, exact, rtol=1e-9, atol=1e-12)


def test_bounded_mode_ghosts_split_the_weight_of_an_outlier() -> None:
    """Long runs repeat the converged top eigenvalue; the copies share its exact weight."""
    eigenvalues = _bulk_and_outliers()
    a = _matrix(eigenvalues, 0)
    quadrature = _bounded(a, probes=3, steps=100, seed=2)
    z = rademacher(400, 3, generator=torch.Generator().manual_seed(2), like=a)
    values, vectors = torch.linalg.eigh(a)
    top = (values - 30.0).abs() < 1e-9  # the outlier 30 is there twice
    exact = ((vectors[:, top].T @ z).square().sum(dim=0) / 400).tolist()
    near = (quadrature.nodes - 30.0).abs() < 1e-6
    copies = near.sum(dim=1)
    assert bool((copies >= 2).all()), copies  # ghosts: a plain recurrence finds it again
    split = (quadrature.weights * near).sum(dim=1).tolist()
    assert split == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("threshold", [-0.3, 0.0, 0.2, 1.0, 5.0])
def test_bounded_mass_below_matches_the_exact_histogram(threshold: float) -> None:
    eigenvalues = _bulk_and_outliers()
    quadrature = _bounded(_matrix(eigenvalues, 0), probes=24, steps=100)
    exact = float((eigenvalues < threshold).double().mean())
    value, stderr = mass_below(quadrature, threshold)
    low, high = mass_bracket(quadrature, threshold)
    assert low - 4 * stderr <= exact <= high + 4 * stderr, (low, exact, high, stderr)
    assert abs(value - exact) <= (high - low) + 4 * stderr
    assert high - low < 0.12


def test_bounded_moments_and_smoothed_density_match_the_exact_spectrum() -> None:
    eigenvalues = _bulk_and_outliers()
    a = _matrix(eigenvalues, 0)
    quadrature = _bounded(a, probes=32, steps=40)
    for j in (1, 2, 3):
        value, stderr = moment(quadrature, j)
        exact = float(eigenvalues.pow(j).mean())
        assert abs(value - exact) < 4 * stderr, (j, value, exact, stderr)
        assert stderr < 0.2 * abs(exact)
    quadrature = _bounded(a, probes=24, steps=80)
    sigma = 20 * default_sigma(quadrature)
    grid = grid_for(quadrature, sigma, 2000)
    density, stderr = smoothed(quadrature, grid, sigma)
    offsets = (grid[None, :] - eigenvalues[:, None]) / sigma
    exact = (torch.exp(-0.5 * offsets.square()) / (sigma * math.sqrt(2 * math.pi))).mean(dim=0)
    step = float(grid[1] - grid[0])
    assert abs(float(density.sum()) * step - 1) < 1e-3
    assert float((density - exact).abs().sum()) * step < 0.1
    assert float(((density - exact).abs() <= 4 * stderr + 1e-3).double().mean()) > 0.95


def test_bounded_blocks_get_their_own_densities() -> None:
    left, right = torch.linspace(-1, 1, 50, dtype=F64), torch.linspace(2, 5, 70, dtype=F64)
    a = torch.block_diag(_matrix(left, 1), _matrix(right, 2))
    blocks = spectral_quadrature(
        lambda v: a @ v,
        120,
        probes=6,
        steps=60,
        max_basis=2,
        blocks=[(0, 50), (50, 120)],
        generator=torch.Generator().manual_seed(0),
        dtype=F64,
    )
    assert [b.size for b in blocks] == [50, 70] and not blocks[0].reorthogonalised
    assert blocks[0].depths == (50,) * 6  # a block no larger than the steps stops when spanned
    for block, spectrum in zip(blocks, (left, right), strict=True):
        nodes = block.nodes[block.weights > 0]
        assert spectrum.min() - 1e-9 <= nodes.min() and nodes.max() <= spectrum.max() + 1e-9
        value, stderr = moment(block, 2)
        assert abs(value - float(spectrum.square().mean())) < 4 * stderr + 1e-9
