"""The curvature operator against dense float64 truth, across the case table."""

from __future__ import annotations

import pytest
import torch

from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.routes import FORWARD, REVERSE
from hesscli.errors import DifferentiationError
from tests import dense
from tests.cases import CASES, NO_FORWARD_MODE, Case, N

F64 = torch.float64
TOL = 1e-10  # float64: products are exact up to round-off
SPLIT_TOL = 1e-12


def _operator(case: Case, kind: str = "hessian", **kwargs: object) -> CurvatureOperator:
    return CurvatureOperator(
        case.model, case.dataset(), case.loss, kind=kind, reduction=case.reduction, **kwargs
    )


def _truth(case: Case, kind: str, names: list[str]) -> torch.Tensor:
    at = dense.flat_parameters(case.model, names)
    if kind == "hessian":
        return dense.dense_hessian(
            dense.loss_at(case.model, names, case.inputs, case.targets, case.loss), at
        )
    return dense.dense_ggn(
        dense.outputs_at(case.model, names, case.inputs), lambda o: case.loss(o, case.targets), at
    )


def _vectors(size: int, count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(size, count, generator=torch.Generator().manual_seed(seed), dtype=F64)


_TRUTH: dict[tuple[str, str], torch.Tensor] = {}


def truth(case: Case, kind: str) -> torch.Tensor:
    """The dense truth over every trainable parameter in the operator's order (cached)."""
    key = (case.name, kind)
    if key not in _TRUTH:
        _TRUTH[key] = _truth(case, kind, _operator(case).layout.names)
    return _TRUTH[key]


NAMES = sorted(CASES)
KINDS = ["hessian", "ggn"]


@pytest.mark.parametrize("name", NAMES)
def test_truth_agrees_with_finite_differences(name):
    """The reference itself: double backward equals central differences of the gradient."""
    case = CASES[name]
    names = _operator(case).layout.names
    at = dense.flat_parameters(case.model, names)
    fn = dense.loss_at(case.model, names, case.inputs, case.targets, case.loss)
    vectors = _vectors(at.numel(), 3, seed=5)
    expected = truth(case, "hessian") @ vectors
    fd = dense.fd_columns(fn, at, vectors)
    assert dense.relative(fd, expected) < 1e-6, dense.worst(fd, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_products_equal_dense_truth(name, kind):
    case = CASES[name]
    op = _operator(case, kind, micro_batch=3)  # 3 + 3 + 1 samples
    vectors = _vectors(op.size, 4)
    actual = op.matmat(vectors)
    expected = truth(case, kind) @ vectors
    assert dense.relative(actual, expected) < TOL, dense.worst(actual, expected)
    again = op.matmat(vectors)  # a second call (reverse route: from the cached graphs)
    assert dense.relative(again, actual) < SPLIT_TOL, dense.worst(again, actual)
    assert op.counters.products == 8
    assert op.counters.data_passes == 2
    assert op.route is not None
    assert op.route.route in {FORWARD, REVERSE}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_routes_agree(name, kind):
    """Forward-over-reverse equals reverse-over-reverse, each forced and unchecked."""
    case = CASES[name]
    vectors = _vectors(_operator(case).size, 3, seed=1)
    reverse = _operator(case, kind, method="reverse", verify=False).matmat(vectors)
    if name in NO_FORWARD_MODE:
        with pytest.raises(NotImplementedError, match="forward AD"):
            _operator(case, kind, method="forward", verify=False).matmat(vectors)
        with pytest.raises(DifferentiationError, match="--hvp-method forward is unavailable"):
            _operator(case, kind, method="forward").matmat(vectors)
        auto = _operator(case, kind)
        assert dense.relative(auto.matmat(vectors), reverse) < TOL
        assert auto.route.route == REVERSE
        return
    forward = _operator(case, kind, method="forward", verify=False).matmat(vectors)
    assert dense.relative(forward, reverse) < TOL, dense.worst(forward, reverse)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_every_micro_batch_split_equals_one_pass(name, kind):
    case = CASES[name]
    vectors = _vectors(_operator(case).size, 2, seed=2)
    whole = _operator(case, kind, micro_batch=N).matmat(vectors)
    for size in range(1, N):
        split = _operator(case, kind, micro_batch=size).matmat(vectors)
        assert dense.relative(split, whole) < SPLIT_TOL, f"micro-batch {size}: " + dense.worst(
            split, whole
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_layer_subset_is_the_dense_block(name, kind):
    case = CASES[name]
    full = _operator(case)
    for block in full.blocks:
        op = _operator(case, kind, blocks=[(block.name, list(block.parameters))], micro_batch=2)
        rows = slice(block.start, block.stop)
        expected = truth(case, kind)[rows, rows]
        actual = op.dense()
        assert actual.shape == expected.shape
        assert dense.relative(actual, expected) < TOL, (
            block.name + ": " + dense.worst(actual, expected)
        )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_block_products_in_one_pass(name, kind):
    """All layers' diagonal blocks C_ll·V_l from one data pass."""
    case = CASES[name]
    op = _operator(case, kind, micro_batch=4)
    vectors = _vectors(op.size, 3, seed=3)
    actual = op.block_matmat(vectors)
    full = truth(case, kind)
    expected = torch.zeros_like(vectors)
    for block in op.blocks:
        rows = slice(block.start, block.stop)
        expected[rows] = full[rows, rows] @ vectors[rows]
    assert dense.relative(actual, expected) < TOL, dense.worst(actual, expected)
    assert op.counters.data_passes == 1
    assert op.counters.products == 3 * len(op.blocks)


def test_tied_weight_is_one_coordinate_block():
    case = CASES["tied/mse"]
    op = _operator(case)
    assert "dec.weight" not in op.layout.names
    assert op.size == 16 + 4 + 4  # shared weight once, two biases


def test_frozen_parameters_are_not_coordinates():
    case = CASES["frozen/cross_entropy"]
    assert _operator(case).layout.names == ["2.weight", "2.bias"]


def test_unused_parameters_have_zero_curvature():
    case = CASES["unused/cross_entropy"]
    op = _operator(case)
    block = op.layout.block("spare")
    matrix = op.dense()
    assert torch.count_nonzero(matrix[block.start : block.stop]) == 0
    assert torch.count_nonzero(matrix[:, block.start : block.stop]) == 0
    assert torch.count_nonzero(matrix) > 0


def test_sum_reduction_adds_micro_batches():
    """A summed loss: the curvature of the sum, whatever the split (weight 1, not bⱼ/N)."""
    case = CASES["mlp-tanh/cross_entropy-sum"]
    mean_case = CASES["mlp-tanh/cross_entropy"]
    assert case.reduction == "sum"
    op = _operator(case, micro_batch=2)
    expected = truth(case, "hessian")
    assert dense.relative(op.dense(), expected) < TOL
    del mean_case


def test_ggn_equals_hessian_for_linear_model_and_squared_error():
    """A model linear in its parameters has zero residual term: GGN = H exactly."""
    case = CASES["mlp-relu/mse"]
    op = CurvatureOperator(torch.nn.Linear(4, 3).double(), case.dataset(), case.loss, micro_batch=3)
    ggn = CurvatureOperator(op.model, case.dataset(), case.loss, kind="ggn", micro_batch=2).dense()
    assert dense.relative(ggn, op.dense()) < TOL


def test_dense_is_symmetric_and_matches_matvec():
    case = CASES["transformer/cross_entropy"]
    op = _operator(case, micro_batch=3)
    matrix = op.dense(columns_per_pass=64)
    assert dense.relative(matrix, matrix.T) < TOL
    vector = _vectors(op.size, 1, seed=9)[:, 0]
    assert op.matvec(vector).shape == (op.size,)
    assert dense.relative(op.matvec(vector), matrix @ vector) < TOL
