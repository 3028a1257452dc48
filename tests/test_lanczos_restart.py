"""A bounded Lanczos basis: thick restarts, the memory arithmetic, lockstep with restarts.

Dense symmetric matrices with prescribed spectra in float64 are the truth; every run is seeded.
"""

from __future__ import annotations

import pytest
import torch

from hesscli.algorithms.density import DensitySearch
from hesscli.algorithms.eigen import ExtremeSearch, extreme_eigenvalues
from hesscli.algorithms.lanczos import Lanczos
from hesscli.algorithms.lanczos_memory import basis_within, lanczos_bytes
from hesscli.algorithms.lanczos_slabs import SLAB
from hesscli.algorithms.lockstep import Member, advance_together
from hesscli.algorithms.ritz import Extremes, extremes_of
from hesscli.algorithms.segments import Segments
from tests.dense import assert_honest_pairs

F64 = torch.float64
CPU = torch.device("cpu")


def prescribed(spectrum: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q·diag(spectrum)·Qᵀ with a random orthogonal Q."""
    n = spectrum.numel()
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    )
    return q @ torch.diag(spectrum.to(F64)) @ q.T


def hessian_like(n: int = 300, seed: int = 0) -> torch.Tensor:
    """A few large outliers, a bulk near zero, some negative curvature (like a network's)."""
    g = torch.Generator().manual_seed(seed)
    bulk = 0.05 * torch.randn(n - 8, generator=g, dtype=F64)
    outliers = torch.tensor([40.0, 25.0, 13.0, 9.0, 6.5, 4.0, -3.0, -1.7], dtype=F64)
    return prescribed(torch.cat([outliers, bulk]), seed)


def stepped(search: ExtremeSearch, max_basis: int) -> list[Extremes]:
    """Run a search to its end, checking at every step that the basis stays bounded."""
    while search.wants_more():
        search.run.step()
        assert len(search.run.basis) <= max_basis
        assert len(search.run.products) <= max_basis
    return search.result()


# -- thick restart reaches what the unbounded run reaches -----------------------------------------
@pytest.mark.parametrize("keep_products", [True, False])
def test_thick_restart_with_eight_vectors_finds_the_top_three(keep_products: bool) -> None:
    a = hessian_like(300)
    truth = torch.linalg.eigvalsh(a).flip(0)[:3]
    kwargs = {"top_k": 3, "tol": 1e-10, "dtype": F64, "keep_products": keep_products}
    (unbounded,) = extreme_eigenvalues(
        lambda v: a @ v, 300, generator=torch.Generator().manual_seed(0), **kwargs
    )
    search = ExtremeSearch(
        lambda v: a @ v, 300, max_basis=8, generator=torch.Generator().manual_seed(0), **kwargs
    )
    (bounded,) = stepped(search, 8)
    assert search.run.thick_restarts > 0  # the basis really was too small
    values = torch.tensor([p.value for p in bounded.top], dtype=F64)
    reference = torch.tensor([p.value for p in unbounded.top], dtype=F64)
    torch.testing.assert_close(values, reference, rtol=0, atol=1e-8)
    torch.testing.assert_close(values, truth, rtol=0, atol=1e-8)
    assert all(p.converged for p in bounded.top)
    assert_honest_pairs(a, search.run, bounded)


def test_thick_restart_keeps_both_ends() -> None:
    """Top and bottom together on an evenly spaced spectrum (small gaps: many restarts)."""
    a = prescribed(torch.linspace(-1, 10, 300))
    truth = torch.linalg.eigvalsh(a)
    search = ExtremeSearch(
        lambda v: a @ v,
        300,
        top_k=2,
        bottom_k=2,
        tol=1e-10,
        max_steps=1000,  # a restarted run may need more products than rows
        max_basis=16,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    (result,) = stepped(search, 16)
    assert search.run.thick_restarts > 5 and result.steps < 300
    top = torch.tensor([p.value for p in result.top], dtype=F64)
    bottom = torch.tensor([p.value for p in result.bottom], dtype=F64)
    torch.testing.assert_close(top, truth.flip(0)[:2], rtol=0, atol=1e-8)
    torch.testing.assert_close(bottom, truth[:2], rtol=0, atol=1e-8)
    assert all(p.converged for p in (*result.top, *result.bottom))
    assert_honest_pairs(a, search.run, result)


def test_block_eigenvalues_with_a_bounded_basis() -> None:
    """Per-layer runs restart together; a block smaller than the basis just spans."""
    full = hessian_like(90, seed=2)
    blocks = [(0, 30), (30, 31), (31, 90)]
    diagonal = torch.block_diag(*[full[a:b, a:b] for a, b in blocks])
    search = ExtremeSearch(
        lambda v: diagonal @ v,
        90,
        top_k=2,
        bottom_k=1,
        tol=1e-10,
        max_basis=7,
        blocks=blocks,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    results = stepped(search, 7)
    assert search.run.thick_restarts > 0
    for (a, b), result in zip(blocks, results, strict=True):
        truth = torch.linalg.eigvalsh(full[a:b, a:b])
        expected_top = truth.flip(0)[: min(2, b - a)].tolist()
        assert [p.value for p in result.top] == pytest.approx(expected_top, rel=0, abs=1e-8)
        assert result.bottom[0].value == pytest.approx(float(truth[0]), rel=0, abs=1e-8)
        assert all(p.converged for p in (*result.top, *result.bottom))
    assert results[1].exhausted and results[1].steps == 1


def test_repeated_eigenvalues_with_a_bounded_basis() -> None:
    """I ⊗ A with a basis too small to span it: each closure of the Krylov space adds a copy."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 3, generator=g, dtype=F64)
    kron = torch.kron(torch.eye(5, dtype=F64), m @ m.T)  # rank 15, each eigenvalue ×5
    truth = torch.linalg.eigvalsh(kron)
    (result,) = extreme_eigenvalues(
        lambda v: kron @ v,
        30,
        top_k=3,
        bottom_k=1,
        tol=1e-10,
        max_steps=200,
        max_basis=8,
        dtype=F64,
        generator=g,
    )
    assert [p.value for p in result.top] == pytest.approx(truth.flip(0)[:3].tolist(), rel=1e-9)
    assert result.bottom[0].value == pytest.approx(0.0, abs=1e-10)


# -- the relation C·Q = Q·T + β·q·eᵀ, with and without restarts -----------------------------------
def _check_relation(
    run: Lanczos, matrix: torch.Tensor, blocks: list[tuple[int, int]], atol: float
) -> None:
    """Per process: the relation with T = projected(), orthonormality, the kept products."""
    for s, (lo, hi) in enumerate(blocks):
        for k in range(run.order.shape[1]):
            d = int(run.order[s, k])
            q = torch.stack([v[lo:hi, k] for v in run.basis[:d]], dim=1)
            following = run.basis[d][lo:hi, k]
            residual = matrix[lo:hi, lo:hi] @ q - q @ run.projected(s, k)
            residual[:, -1] -= run.last_beta(s, k) * following
            assert float(residual.abs().max()) < atol, (s, k, float(residual.abs().max()))
            both = torch.cat([q, following[:, None]], dim=1)
            gram = both.T @ both - torch.eye(d + 1, dtype=F64)
            assert float(gram.abs().max()) < atol
            if run.keep_products:
                images = torch.stack([v[lo:hi, k] for v in run.products[:d]], dim=1)
                torch.testing.assert_close(images, matrix[lo:hi, lo:hi] @ q, rtol=0, atol=atol)


def test_defining_relation_holds_through_thick_restarts() -> None:
    """After a restart T is an arrow then a tridiagonal, and the relation still holds."""
    a = hessian_like(120)
    blocks = [(0, 50), (50, 120)]
    diagonal = torch.block_diag(a[:50, :50], a[50:, 50:])
    run = Lanczos(
        lambda v: diagonal @ v,
        torch.randn(120, 2, generator=torch.Generator().manual_seed(0), dtype=F64),
        segments=Segments.of(120, blocks, device=CPU),
        max_basis=9,
        wanted=(2, 1),
        keep_products=True,
    )
    for _ in range(40):
        run.step()
        assert len(run.basis) <= 9
        _check_relation(run, diagonal, blocks, atol=1e-12)
    assert run.thick_restarts >= 5 and run.steps == 40
    t = run.projected(0, 0)
    head = 2 + 1 + 2  # kept: wanted (2, 1) and half the remaining room of 9 − 2 − 3
    assert int(run.order[0, 0]) > head + 1
    allowed = torch.eye(t.shape[0], dtype=torch.bool)
    allowed[:head, head] = allowed[head, :head] = True  # the kept Ritz vectors' couplings σ
    rows = torch.arange(head, t.shape[0] - 1)
    allowed[rows, rows + 1] = allowed[rows + 1, rows] = True  # then a tridiagonal
    assert not bool(t[~allowed].any()) and torch.equal(t, t.T)


def test_unrestarted_relation_across_several_slabs() -> None:
    """More steps than one slab holds, two columns, two blocks: still plain Lanczos."""
    a = hessian_like(150, seed=1)
    blocks = [(0, 60), (60, 150)]
    diagonal = torch.block_diag(a[:60, :60], a[60:, 60:])
    run = Lanczos(
        lambda v: diagonal @ v,
        torch.randn(150, 2, generator=torch.Generator().manual_seed(1), dtype=F64),
        segments=Segments.of(150, blocks, device=CPU),
    )
    run.extend(SLAB + 20)
    assert run.thick_restarts == 0 and run.steps == SLAB + 20
    assert run.depth.tolist() == [[SLAB + 20] * 2] * 2
    _check_relation(run, diagonal, blocks, atol=1e-11)
    t = run.projected(1, 1)
    assert torch.equal(
        t,
        torch.diag(torch.diagonal(t))
        + torch.diag(torch.diagonal(t, 1), 1)
        + torch.diag(torch.diagonal(t, -1), -1),
    )  # tridiagonal


# -- determinism ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_same_seed_same_numbers_with_restarts(dtype: torch.dtype) -> None:
    a = hessian_like(200, seed=5).to(dtype)

    def run() -> list[tuple[float, float]]:
        (r,) = extreme_eigenvalues(
            lambda v: a @ v,
            200,
            top_k=2,
            bottom_k=1,
            tol=1e-4 if dtype == torch.float32 else 1e-10,
            max_basis=6,
            dtype=dtype,
            generator=torch.Generator().manual_seed(3),
        )
        return [(p.value, p.residual) for p in (*r.top, *r.bottom)]

    assert run() == run()


# -- memory arithmetic ---------------------------------------------------------------------------
def test_bytes_and_the_basis_that_fits() -> None:
    p, k = 22_000_000, 1
    plain = lanczos_bytes(p, k, 40, torch.float32)
    kept = lanczos_bytes(p, k, 40, torch.float32, keep_products=True)
    assert plain == 4 * p * (40 + 2)  # basis, the product handed in, a restart draw
    assert kept - plain == 4 * p * 40  # the products double the basis
    assert lanczos_bytes(p, 8, 2, torch.float64) == 8 * p * 8 * (2 + 2)  # bounded SLQ
    assert lanczos_bytes(p, k, 40, torch.float32, ritz_vectors=2) - plain == 3 * 2 * 4 * p
    for budget in (plain, plain + 4 * p - 1, kept):
        fits = basis_within(budget, p, k, torch.float32)
        assert lanczos_bytes(p, k, fits, torch.float32) <= budget
        assert lanczos_bytes(p, k, fits + 1, torch.float32) > budget
    assert basis_within(kept, p, k, torch.float32, keep_products=True) == 40
    assert basis_within(100, p, k, torch.float32) == 0


def test_a_bounded_run_never_allocates_past_its_basis() -> None:
    a = hessian_like(200)
    run = Lanczos(lambda v: a @ v, torch.ones(200, 1, dtype=F64), max_basis=10, wanted=(3, 0))
    run.extend(60)
    assert run.thick_restarts > 0
    allocated = sum(slab.shape[1] for slab in run._slabs)  # the bound itself
    assert allocated == 10


# -- bad arguments -------------------------------------------------------------------------------
def test_bounded_arguments_are_checked() -> None:
    a = torch.eye(20, dtype=F64)
    with pytest.raises(ValueError, match=r"max_basis=4 cannot hold the 3 wanted .*need ≥ 5"):
        extreme_eigenvalues(lambda v: a @ v, 20, top_k=2, bottom_k=1, max_basis=4, dtype=F64)
    with pytest.raises(ValueError, match="at least 2 vectors, got 1"):
        Lanczos(lambda v: v, torch.ones(5, 1), max_basis=1)
    with pytest.raises(ValueError, match="keep_products needs the basis"):
        Lanczos(lambda v: v, torch.ones(5, 1), keep_products=True, reorthogonalise=False)
    with pytest.raises(ValueError, match="at least 2 vectors per probe, got 1"):
        DensitySearch(lambda v: v, 5, probes=2, steps=3, max_basis=1)
    bounded = DensitySearch(
        lambda v: a @ v,
        20,
        probes=2,
        steps=5,
        max_basis=3,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    bounded.run.extend(5)
    full = DensitySearch(lambda v: a @ v, 20, probes=1, steps=3, dtype=F64)
    full.run.extend(3)
    with pytest.raises(RuntimeError, match=r"keeps nothing through a thick restart"):
        full.run.step()  # a quadrature's basis holds exactly its steps: never restarted
    with pytest.raises(ValueError, match="kept no basis"):
        extremes_of(bounded.run, 1, 0, 1e-6)
    with pytest.raises(ValueError, match="basis was not kept"):
        bounded.run.vectors(0, 0, torch.ones(5, 1, dtype=F64))


# -- lockstep: restarting members give what they give alone --------------------------------------
def test_lockstep_with_bounded_members_matches_solo_runs() -> None:
    a = hessian_like(120, seed=4)
    blocks = [(0, 40), (40, 120)]
    diagonal = torch.block_diag(a[:40, :40], a[40:, 40:])

    def members() -> tuple[ExtremeSearch, ExtremeSearch, DensitySearch]:
        common = {"dtype": F64, "tol": 1e-10, "top_k": 2, "bottom_k": 1, "max_basis": 6}
        whole = ExtremeSearch(
            lambda v: a @ v, 120, generator=torch.Generator().manual_seed(0), **common
        )
        per_block = ExtremeSearch(
            lambda v: diagonal @ v,
            120,
            blocks=blocks,
            generator=torch.Generator().manual_seed(0),
            **common,
        )
        density = DensitySearch(
            lambda v: a @ v,
            120,
            probes=3,
            steps=30,
            max_basis=2,
            dtype=F64,
            generator=torch.Generator().manual_seed(0),
        )
        return whole, per_block, density

    together = members()
    passes = advance_together(
        [Member(together[0]), Member(together[1], blockwise=True), Member(together[2])],
        lambda x, y: (a @ x, diagonal @ y),
    )
    alone = members()
    for search in alone:
        while search.wants_more():
            search.run.step()
    assert passes == max(s.run.steps for s in together)
    assert together[0].run.thick_restarts > 0 and together[1].run.thick_restarts > 0
    for mine, theirs in zip(together[:2], alone[:2], strict=True):
        for x, y in zip(mine.result(), theirs.result(), strict=True):
            assert x.steps == y.steps
            for p, q in zip((*x.top, *x.bottom), (*y.top, *y.bottom), strict=True):
                assert p.value == pytest.approx(q.value, rel=0, abs=1e-10)
    # Without reorthogonalisation, where ghosts appear depends on the last bits of the
    # products (GEMM over 4 columns here, 3 alone); the quadrature — its moments — does not.
    (q1,), (q2,) = together[2].result(), alone[2].result()
    for power in range(1, 20):
        m1 = (q1.weights * (q1.nodes / 40).pow(power)).sum(dim=1)
        m2 = (q2.weights * (q2.nodes / 40).pow(power)).sum(dim=1)
        torch.testing.assert_close(m1, m2, rtol=1e-9, atol=1e-12)
