"""Algorithms on dense symmetric matrices with prescribed spectra (no model anywhere)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hesscli.algorithms.diagonal import diagonal_stats, estimate_diagonal, exact_diagonal
from hesscli.algorithms.eigen import ExtremeSearch, extreme_eigenvalues
from hesscli.algorithms.lanczos import Lanczos
from hesscli.algorithms.segments import Segments
from hesscli.algorithms.trace import estimate_trace, exact_trace, t_quantile_975
from tests.dense import assert_honest_pairs

F64 = torch.float64


def prescribed(spectrum: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q·diag(spectrum)·Qᵀ with a random orthogonal Q."""
    n = spectrum.numel()
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q @ torch.diag(spectrum.to(F64)) @ q.T


def hessian_like(n: int = 300, seed: int = 0) -> torch.Tensor:
    """A few large outliers, a bulk near zero, some negative curvature (like a network's)."""
    g = torch.Generator().manual_seed(seed)
    bulk = 0.05 * torch.randn(n - 8, generator=g, dtype=F64)
    outliers = torch.tensor([40.0, 25.0, 13.0, 9.0, 6.5, 4.0, -3.0, -1.7], dtype=F64)
    return prescribed(torch.cat([outliers, bulk]), seed)


def counted(matrix: torch.Tensor) -> tuple[list[int], object]:
    calls = [0]

    def matmat(v: torch.Tensor) -> torch.Tensor:
        calls[0] += v.shape[1]
        return matrix.to(v.dtype) @ v

    return calls, matmat


# -- Lanczos -----------------------------------------------------------------------------------
def test_lanczos_defining_relation_and_orthonormality() -> None:
    a = hessian_like(120)
    run = Lanczos(lambda v: a @ v, torch.randn(120, 1, dtype=F64))
    run.extend(30)
    q = torch.cat(run.basis[:30], dim=1)
    t = run.tridiagonal(0, 0)
    residual = a @ q - q @ t
    expected = run.last_beta(0, 0) * run.basis[30]  # β_m q_{m+1} e_mᵀ
    assert torch.allclose(residual[:, :-1], torch.zeros_like(residual[:, :-1]), atol=1e-10)
    assert torch.allclose(residual[:, -1:], expected, atol=1e-10)
    assert torch.allclose(q.T @ q, torch.eye(30, dtype=F64), atol=1e-12)


def test_lanczos_at_full_depth_reconstructs_the_matrix() -> None:
    a = prescribed(torch.linspace(-2, 5, 40))
    run = Lanczos(lambda v: a @ v, torch.randn(40, 1, dtype=F64))
    run.extend(100)
    assert run.done and run.steps == 40
    q = torch.cat(run.basis[:40], dim=1)
    assert torch.allclose(q @ run.tridiagonal(0, 0) @ q.T, a, atol=1e-10)


def test_lanczos_restarts_when_its_krylov_space_closes() -> None:
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64))
    start = torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=F64)  # lives in a 2-d eigenspace
    run = Lanczos(lambda v: a @ v, start, generator=torch.Generator().manual_seed(0))
    run.extend(10)
    assert run.steps == 4 and run.done and run.restarts == 1
    assert float(run.betas[1][0, 0]) == 0.0  # T stays tridiagonal, split at the restart
    assert torch.linalg.eigvalsh(run.tridiagonal(0, 0)).tolist() == pytest.approx([1, 2, 3, 4])
    q = torch.cat(run.basis[:4], dim=1)
    assert torch.allclose(q.T @ q, torch.eye(4, dtype=F64), atol=1e-12)


def test_repeated_eigenvalues_are_all_found() -> None:
    """A last-layer block of an MSE loss is I ⊗ A: every eigenvalue repeated per output."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 3, generator=g, dtype=F64)
    kron = torch.kron(torch.eye(5, dtype=F64), m @ m.T)  # rank 15, each eigenvalue ×5
    truth = torch.linalg.eigvalsh(kron)
    (result,) = extreme_eigenvalues(
        lambda v: kron @ v, 30, top_k=7, bottom_k=1, tol=1e-10, dtype=F64, generator=g
    )
    assert [p.value for p in result.top] == pytest.approx(truth.flip(0)[:7].tolist(), rel=1e-9)
    assert result.bottom[0].value == pytest.approx(0.0, abs=1e-10)


def test_lanczos_blocks_run_independent_processes_in_lockstep() -> None:
    a, b = prescribed(torch.linspace(1, 3, 10)), prescribed(torch.linspace(-5, 0, 25), 1)
    block = torch.block_diag(a, b)
    segments = Segments.of(35, [(0, 10), (10, 35)], device=torch.device("cpu"))
    run = Lanczos(lambda v: block @ v, torch.randn(35, 1, dtype=F64), segments=segments)
    run.extend(40)
    assert run.depth[:, 0].tolist() == [10, 25]
    for index, part in enumerate([a, b]):
        ritz = torch.linalg.eigvalsh(run.tridiagonal(index, 0))
        assert torch.allclose(ritz, torch.linalg.eigvalsh(part), atol=1e-10)


def test_segments_reject_a_bad_tiling() -> None:
    with pytest.raises(ValueError, match="do not tile"):
        Segments.of(10, [(0, 4), (5, 10)], device=torch.device("cpu"))


# -- extreme eigenvalues -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "tol", "accuracy"), [(F64, 1e-8, 1e-8), (torch.float32, 1e-4, 1e-4)]
)
def test_top_and_bottom_eigenvalues_of_a_prescribed_spectrum(
    dtype: torch.dtype, tol: float, accuracy: float
) -> None:
    a = hessian_like(300)
    truth = torch.linalg.eigvalsh(a)
    calls, matmat = counted(a)
    (result,) = extreme_eigenvalues(
        matmat,
        300,
        top_k=5,
        bottom_k=2,
        tol=tol,
        dtype=dtype,
        generator=torch.Generator().manual_seed(0),
    )
    top = torch.tensor([p.value for p in result.top], dtype=F64)
    bottom = torch.tensor([p.value for p in result.bottom], dtype=F64)
    assert torch.allclose(top, truth.flip(0)[:5], rtol=accuracy, atol=0)
    assert torch.allclose(bottom, truth[:2], rtol=accuracy, atol=0)
    assert all(p.converged for p in (*result.top, *result.bottom))
    assert calls[0] == result.steps < 80  # stopped on the tolerance, far below 300


def test_reported_residuals_and_errors_are_honest() -> None:
    """With products kept (recomputed) or not (bounded from the recurrence, no product)."""
    a = hessian_like(200, seed=3)
    for keep in (True, False):
        search = ExtremeSearch(
            lambda v: a @ v,
            200,
            top_k=3,
            bottom_k=2,
            tol=1e-3,
            keep_products=keep,
            dtype=F64,
            generator=torch.Generator().manual_seed(1),
        )
        calls = search.run.steps
        while search.wants_more():
            search.run.step()
        calls = search.run.steps - calls
        (result,) = search.result()
        assert result.steps == calls  # the residuals cost no product
        assert_honest_pairs(a, search.run, result)
        assert all(p.converged for p in (*result.top, *result.bottom))


def test_unconverged_values_are_flagged() -> None:
    a = prescribed(torch.linspace(0, 1, 400) ** 3)  # clustered top: slow convergence
    (result,) = extreme_eigenvalues(
        lambda v: a @ v,
        400,
        top_k=5,
        tol=1e-12,
        max_steps=6,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.steps == 6
    assert not all(p.converged for p in result.top)
    assert any(p.residual > 1e-12 * result.scale for p in result.top)


def test_block_eigenvalues_are_those_of_each_diagonal_block() -> None:
    full = hessian_like(90, seed=2)
    blocks = [(0, 30), (30, 31), (31, 90)]
    diagonal = torch.block_diag(*[full[a:b, a:b] for a, b in blocks])
    results = extreme_eigenvalues(
        lambda v: diagonal @ v,
        90,
        top_k=3,
        bottom_k=1,
        tol=1e-10,
        blocks=blocks,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    for (a, b), result in zip(blocks, results, strict=True):
        truth = torch.linalg.eigvalsh(full[a:b, a:b])
        expected_top = truth.flip(0)[: min(3, b - a)].tolist()
        assert [p.value for p in result.top] == pytest.approx(expected_top, rel=1e-8, abs=1e-12)
        assert result.bottom[0].value == pytest.approx(float(truth[0]), rel=1e-8, abs=1e-12)
    assert results[1].exhausted and results[1].steps == 1


def test_same_seed_same_numbers_and_a_zero_operator() -> None:
    a = hessian_like(100, seed=5)

    def run(seed: int) -> list[float]:
        (r,) = extreme_eigenvalues(
            lambda v: a.float() @ v,
            100,
            top_k=2,
            bottom_k=1,
            tol=1e-2,
            dtype=torch.float32,
            generator=torch.Generator().manual_seed(seed),
        )
        return [p.value for p in (*r.top, *r.bottom)]

    assert run(7) == run(7)
    (zero,) = extreme_eigenvalues(lambda v: 0 * v, 10, top_k=2, dtype=F64)
    assert [p.value for p in zero.top] == [0.0, 0.0] and zero.top[0].converged and zero.exhausted


def test_eigenvalue_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one"):
        extreme_eigenvalues(lambda v: v, 5, top_k=0, bottom_k=0)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 60),
    seed=st.integers(0, 10_000),
    top_k=st.integers(0, 4),
    bottom_k=st.integers(0, 3),
)
def test_property_extremes_of_random_symmetric_matrices(
    n: int, seed: int, top_k: int, bottom_k: int
) -> None:
    if top_k + bottom_k == 0:
        top_k = 1
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    a = (m + m.T) / 2
    (result,) = extreme_eigenvalues(
        lambda v: a @ v, n, top_k=top_k, bottom_k=bottom_k, tol=1e-10, dtype=F64, generator=g
    )
    truth = torch.linalg.eigvalsh(a)
    scale = float(truth.abs().max())
    for i, pair in enumerate(result.top):
        assert abs(pair.value - float(truth[-1 - i])) <= 1e-7 * scale
    for i, pair in enumerate(result.bottom):
        assert abs(pair.value - float(truth[i])) <= 1e-7 * scale


# -- trace ---------------------------------------------------------------------------------
def test_exact_trace_and_block_traces() -> None:
    a = hessian_like(70)
    blocks = [(0, 20), (20, 70)]
    traces = exact_trace(lambda v: a @ v, 70, blocks=blocks, columns=16, dtype=F64)
    assert traces.total.value == pytest.approx(float(a.trace()), rel=1e-12)
    assert [t.value for t in traces.blocks] == pytest.approx(
        [float(a[:20, :20].trace()), float(a[20:, 20:].trace())], rel=1e-12
    )
    assert traces.products == 70 and traces.total.exact and traces.total.stderr == 0


@pytest.mark.parametrize("sketch", [0, 12])
def test_block_traces_sum_to_the_total_and_stop_on_budget(sketch: int) -> None:
    a = hessian_like(200)
    calls, matmat = counted(a)
    traces = estimate_trace(
        matmat,
        200,
        products=64,
        target=None,
        sketch=sketch,
        blocks=[(0, 50), (50, 200)],
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    assert traces.stopped == "budget" and traces.products == calls[0] == 64
    assert sum(t.value for t in traces.blocks) == pytest.approx(traces.total.value, rel=1e-12)
    assert traces.method == ("hutch++" if sketch else "hutchinson")


def test_target_stops_early_and_meets_the_target() -> None:
    a = hessian_like(400, seed=1)
    traces = estimate_trace(
        lambda v: a @ v,
        400,
        products=2000,
        target=0.01,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    assert traces.stopped == "target" and traces.products < 2000
    assert traces.total.stderr <= 0.01 * abs(traces.total.value)


def test_hutch_plus_plus_beats_hutchinson_on_outliers() -> None:
    a = hessian_like(400, seed=4)
    kwargs = {"products": 96, "target": None, "dtype": F64}
    plain = estimate_trace(
        lambda v: a @ v, 400, sketch=0, generator=torch.Generator().manual_seed(0), **kwargs
    )
    deflated = estimate_trace(
        lambda v: a @ v, 400, sketch=24, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert deflated.total.stderr < plain.total.stderr / 3


@pytest.mark.parametrize("sketch", [0, 8])
def test_error_bars_are_calibrated(sketch: int) -> None:
    """The stated 95 % interval holds the exact trace ~95 % of the time over many seeds."""
    a = hessian_like(150, seed=6)
    blocks = [(0, 40), (40, 150)]
    exact = [float(a[:40, :40].trace()), float(a[40:, 40:].trace())]
    total = float(a.trace())
    hits, block_hits, runs = 0, 0, 400
    for seed in range(runs):
        t = estimate_trace(
            lambda v: a @ v,
            150,
            products=2 * sketch + 24,
            target=None,
            sketch=sketch,
            blocks=blocks,
            dtype=F64,
            generator=torch.Generator().manual_seed(seed),
        )
        hits += abs(t.total.value - total) <= t.total.interval
        block_hits += sum(
            abs(b.value - e) <= b.interval for b, e in zip(t.blocks, exact, strict=True)
        )
    assert 0.91 <= hits / runs <= 0.985
    assert 0.91 <= block_hits / (2 * runs) <= 0.985


def test_trace_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="budget, a target"):
        estimate_trace(lambda v: v, 10, products=None, target=None)
    with pytest.raises(ValueError, match="fewer than 8 probes"):
        estimate_trace(lambda v: v, 100, products=20, sketch=8)
    with pytest.raises(ValueError, match="must be positive"):
        estimate_trace(lambda v: v, 100, target=-1.0)


def test_t_quantile() -> None:
    assert t_quantile_975(1) == pytest.approx(12.706)
    assert t_quantile_975(30) == pytest.approx(2.0423, abs=2e-4)
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=2e-4)
    assert math.isinf(t_quantile_975(0))


# -- diagonal ------------------------------------------------------------------------------
def test_exact_diagonal_from_unit_columns() -> None:
    a = hessian_like(77)
    diag = exact_diagonal(lambda v: a @ v, 77, columns=10, dtype=F64)
    assert torch.allclose(diag.values, torch.diagonal(a), atol=1e-14)
    assert diag.products == 77 and diag.exact


def test_diagonal_estimate_error_bars_hold() -> None:
    a = hessian_like(300, seed=8)
    truth = torch.diagonal(a)
    est = estimate_diagonal(
        lambda v: a @ v, 300, products=150, dtype=F64, generator=torch.Generator().manual_seed(0)
    )
    z = (est.values - truth).abs() / est.stderr
    assert not est.exact and est.products == 150 and est.sketch == 50
    assert float((z <= 2.5).double().mean()) > 0.9  # most entries within their error bars
    worse = estimate_diagonal(
        lambda v: a @ v,
        300,
        products=150,
        sketch=0,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    assert (est.values - truth).norm() < (worse.values - truth).norm()


def test_diagonal_stats_match_numpy() -> None:
    import numpy as np

    g = torch.Generator().manual_seed(0)
    values = torch.randn(1000, generator=g, dtype=F64)
    stats = diagonal_stats(values, torch.zeros_like(values), largest=3)
    v = values.numpy()
    assert stats.count == 1000
    assert stats.mean == pytest.approx(v.mean()) and stats.std == pytest.approx(v.std())
    assert (stats.min, stats.max, stats.sum) == pytest.approx((v.min(), v.max(), v.sum()))
    assert stats.median == pytest.approx(np.median(v))
    assert stats.p01 == pytest.approx(np.quantile(v, 0.01))
    assert stats.p99 == pytest.approx(np.quantile(v, 0.99))
    assert stats.fraction_negative == pytest.approx((v < 0).mean())
    order = np.argsort(-np.abs(v))[:3]
    assert [i for i, _ in stats.largest] == order.tolist()
    with pytest.raises(ValueError, match="no entries"):
        diagonal_stats(torch.zeros(0), torch.zeros(0), largest=1)
