"""The gradient as a Lanczos start hint: free from the engine, exact, and never a blind spot."""

from __future__ import annotations

import pytest
import torch

from hesscli.algorithms.eigen import extreme_eigenvalues
from hesscli.engine.operator import CurvatureOperator
from tests import dense
from tests.cases import CASES

F64 = torch.float64


def _operator(name: str, **kwargs: object) -> CurvatureOperator:
    case = CASES[name]
    return CurvatureOperator(
        case.model, case.dataset(), case.loss, reduction=case.reduction, **kwargs
    )


@pytest.mark.parametrize("name", ["mlp-tanh/cross_entropy", "mlp-relu/mse"])
def test_free_gradient_is_the_gradient_of_the_whole_loss(name):
    case = CASES[name]
    op = _operator(name)
    names = op.layout.names
    at = dense.flat_parameters(case.model, names)
    expected = dense.gradient(
        dense.loss_at(case.model, names, case.inputs, case.targets, case.loss), at
    )
    actual = op.free_gradient()
    assert actual is not None
    assert dense.relative(actual.to(F64), expected) < 1e-12
    assert op.counters.products == 0  # built for the first product, none spent yet
    assert op.free_gradient() is None  # handed out once; the products still run
    op.matvec(torch.ones(op.size, dtype=F64))
    assert op.counters.products == 1


def test_no_free_gradient_where_it_would_cost_a_pass():
    case = CASES["mlp-tanh/cross_entropy"]
    several = _operator("mlp-tanh/cross_entropy", micro_batch=max(1, case.inputs.shape[0] // 3))
    assert several.num_micro_batches > 1
    assert several.free_gradient() is None
    assert _operator("mlp-tanh/cross_entropy", kind="ggn").free_gradient() is None
    assert _operator("mlp-tanh/cross_entropy", method="forward").free_gradient() is None


def _matrix(size: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric matrix with a slowly separating top, and its eigenvectors."""
    generator = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=F64))
    values = torch.linspace(-1.0, 1.0, size, dtype=F64)
    values[-1] = 1.05
    return q @ torch.diag(values) @ q.T, q


def _search(a: torch.Tensor, hint: torch.Tensor | None) -> tuple[float, int]:
    (found,) = extreme_eigenvalues(
        lambda v: a @ v,
        a.shape[0],
        top_k=1,
        tol=1e-10,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
        hint=hint,
    )
    return found.top[0].value, found.steps


def test_a_good_hint_saves_steps_and_gives_the_same_eigenvalue():
    a, q = _matrix()
    top = q[:, -1]
    generator = torch.Generator().manual_seed(5)
    near = top + 0.3 * torch.randn(a.shape[0], generator=generator, dtype=F64) / a.shape[0] ** 0.5
    plain, plain_steps = _search(a, None)
    hinted, hinted_steps = _search(a, near)
    assert abs(plain - 1.05) < 1e-9
    assert abs(hinted - 1.05) < 1e-9
    assert hinted_steps < plain_steps


def test_a_hint_blind_to_the_top_eigenvector_still_finds_it():
    """The random half of the start keeps every eigenvector in reach."""
    a, q = _matrix()
    blind = q[:, :-1] @ torch.ones(a.shape[0] - 1, dtype=F64)  # orthogonal to the top one
    value, _ = _search(a, blind)
    assert abs(value - 1.05) < 1e-9


@pytest.mark.parametrize("micro_batch", [1, 3])
def test_start_gradient_is_the_same_for_every_split(micro_batch):
    """Split or not, the start (and so the eigenvalues) depend on the data, not on the split."""
    whole = _operator("mlp-tanh/cross_entropy").start_gradient()
    split = _operator("mlp-tanh/cross_entropy", micro_batch=micro_batch)
    assert split.num_micro_batches > 1
    parts = split.start_gradient()
    assert whole is not None
    assert parts is not None
    assert dense.relative(parts, whole) < 1e-14
