"""Spectrum, trace and exact diagonals on real checkpoints, against independent float64 truth.

Truth: dense Hessians by double backward over all samples (``tests/dense.py``), cross-checked by
finite differences in the engine tests; the diagonal also by the element-by-element double loop
of second derivatives (the classic Per-FedAvg snippet).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hesscli.algorithms.eigen import extreme_eigenvalues
from hesscli.algorithms.trace import estimate_trace
from hesscli.batches import Batch, Dataset
from hesscli.engine.diagonal import GAUSS_NEWTON, OUTPUT_SPACE, UNIT_COLUMNS, exact_diagonal
from hesscli.engine.functional import to_device
from hesscli.engine.operator import CurvatureOperator
from tests.cases import open_sample

F64 = torch.float64


def _truth(op: CurvatureOperator) -> torch.Tensor:
    """Dense matrix by double backward (reverse-over-reverse columns over all samples at once),
    the route the engine tests cross-check against finite differences and autograd."""
    reference = CurvatureOperator(
        op.model,
        op.dataset,
        op.loss_fn,
        kind=op.kind,
        method="reverse",
        verify=False,
        micro_batch=op.dataset.num_samples,
        blocks=[(b.name, list(b.parameters)) for b in op.blocks],
    )
    return reference.dense()


def _double_loop_diagonal(op: CurvatureOperator, parameter: str) -> torch.Tensor:
    """∂²L/∂θᵢ² one element at a time: the naive reference of DESIGN.md."""
    (batch,) = op.dataset.batches
    batch = to_device(batch, device=op.device, dtype=op.dtype)
    p = op.model.get_parameter(parameter)
    loss = op.loss_fn(op.model(batch.inputs), batch.targets)
    (g,) = torch.autograd.grad(loss, p, create_graph=True)
    flat = g.reshape(-1)
    out = torch.empty(flat.numel(), dtype=F64)
    for i in range(flat.numel()):
        (second,) = torch.autograd.grad(flat[i], p, retain_graph=True)
        out[i] = second.reshape(-1)[i]
    return out


def _block_diag(op: CurvatureOperator, values: dict[str, torch.Tensor], block: str) -> dict:
    """A block's flat diagonal split back into its parameters."""
    b = op.layout.block(block)
    out, offset = {}, 0
    for slot in op.layout.slots:
        if slot.name in b.parameters:
            n = slot.stop - slot.start
            out[slot.name] = values[block][offset : offset + n]
            offset += n
    return out


# -- eigenvalues --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["seed_ann", "digits_mlp", "digits_cnn", "tiny_transformer"])
def test_top5_and_bottom_eigenvalues_match_the_dense_hessian(name: str) -> None:
    op = open_sample(name, dtype="float64", micro_batch=50, max_samples=128)
    h = _truth(op)
    truth = torch.linalg.eigvalsh(h)
    (result,) = extreme_eigenvalues(
        op.matmat,
        op.size,
        top_k=5,
        bottom_k=2,
        tol=1e-10,  # on the values' errors: each value to 1e-8 of itself
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
    )
    top = torch.tensor([p.value for p in result.top], dtype=F64)
    bottom = torch.tensor([p.value for p in result.bottom], dtype=F64)
    assert torch.allclose(top, truth.flip(0)[:5], rtol=1e-8, atol=0), (top, truth[-5:])
    assert torch.allclose(bottom, truth[:2], rtol=1e-8, atol=0), (bottom, truth[:2])
    assert all(p.converged for p in (*result.top, *result.bottom))
    for pair in (*result.top, *result.bottom):  # residuals recomputed with the dense truth
        y = pair.vector
        assert y is not None
        true_residual = float(torch.linalg.vector_norm(h @ y - pair.value * y))
        assert true_residual == pytest.approx(pair.residual, rel=1e-3, abs=1e-10)
    assert op.counters.products == result.steps <= op.size  # seed_ann: spanned (restarts)


def test_float32_eigenvalues_to_1e4_and_negative_curvature_found() -> None:
    op64 = open_sample("tiny_transformer", dtype="float64", max_samples=128)
    truth = torch.linalg.eigvalsh(_truth(op64))
    op = open_sample("tiny_transformer", dtype="float32", max_samples=128)
    (result,) = extreme_eigenvalues(
        op.matmat,
        op.size,
        top_k=5,
        bottom_k=1,
        tol=1e-5,  # on the values' errors, relative to ‖C‖: each of the top 5 to 1e-4
        dtype=torch.float32,
        generator=torch.Generator().manual_seed(0),
    )
    top = torch.tensor([p.value for p in result.top], dtype=F64)
    assert torch.allclose(top, truth.flip(0)[:5], rtol=1e-4, atol=0)
    assert truth[0] < 0 and result.bottom[0].value == pytest.approx(float(truth[0]), rel=1e-4)


def test_per_layer_eigenvalues_are_those_of_the_dense_blocks() -> None:
    op = open_sample("digits_mlp", dtype="float64")
    h = _truth(op)
    blocks = list(op.blocks)
    results = extreme_eigenvalues(
        op.block_matmat,
        op.size,
        top_k=3,
        bottom_k=1,
        tol=1e-9,
        dtype=F64,
        blocks=[(b.start, b.stop) for b in blocks],
        generator=torch.Generator().manual_seed(0),
    )
    for block, result in zip(blocks, results, strict=True):
        truth = torch.linalg.eigvalsh(h[block.start : block.stop, block.start : block.stop])
        scale = float(truth.abs().max())
        for i, pair in enumerate(result.top):
            assert abs(pair.value - float(truth[-1 - i])) <= 1e-8 * scale
        assert abs(result.bottom[0].value - float(truth[0])) <= 1e-8 * scale


# -- traces ---------------------------------------------------------------------------------
def test_layer_traces_sum_to_the_total_and_bracket_the_dense_traces() -> None:
    op = open_sample("tiny_transformer", dtype="float64", max_samples=64)
    h = _truth(op)
    blocks = list(op.blocks)
    traces = estimate_trace(
        op.matmat,
        op.size,
        products=400,
        target=None,
        dtype=F64,
        blocks=[(b.start, b.stop) for b in blocks],
        generator=torch.Generator().manual_seed(0),
    )
    assert sum(t.value for t in traces.blocks) == pytest.approx(traces.total.value, rel=1e-10)
    assert abs(traces.total.value - float(h.trace())) <= 4 * traces.total.stderr
    inside = sum(
        abs(t.value - float(h[b.start : b.stop, b.start : b.stop].trace())) <= 4 * t.stderr
        for b, t in zip(blocks, traces.blocks, strict=True)
    )
    assert inside == len(blocks)
    assert op.counters.products == traces.products == 400


# -- exact diagonals ------------------------------------------------------------------------
def test_seed_network_exact_diagonal_equals_the_double_loop() -> None:
    op = open_sample("seed_ann", dtype="float64")
    result = exact_diagonal(op)
    for block in ("fc1", "fc2"):
        for parameter, values in _block_diag(op, result.values, block).items():
            loop = _double_loop_diagonal(op, parameter)
            assert torch.allclose(values, loop, rtol=1e-12, atol=1e-15), parameter
    assert set(result.methods.values()) == {GAUSS_NEWTON}
    assert result.products == 0  # no parameter-space product at all


@pytest.mark.parametrize("layer", ["conv2", "fc"])
def test_cnn_layer_exact_diagonal_equals_the_double_loop(layer: str) -> None:
    op = open_sample("digits_cnn", dtype="float64", max_samples=24)
    result = exact_diagonal(op, blocks=[layer])
    for parameter, values in _block_diag(op, result.values, layer).items():
        loop = _double_loop_diagonal(op, parameter)
        assert torch.allclose(values, loop, rtol=1e-10, atol=1e-14), parameter
    expected = UNIT_COLUMNS if layer == "conv2" else GAUSS_NEWTON
    assert result.methods[layer].startswith(expected)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
@pytest.mark.parametrize("name", ["digits_mlp", "tiny_transformer"])
def test_exact_diagonals_of_every_layer_match_the_dense_matrix(name: str, kind: str) -> None:
    op = open_sample(name, dtype="float64", curvature=kind, max_samples=32, micro_batch=12)
    truth = torch.diagonal(_truth(op))
    result = exact_diagonal(op)
    for block in op.blocks:
        got = result.values[block.name]
        expected = truth[block.start : block.stop]
        assert torch.allclose(got, expected, rtol=1e-9, atol=1e-12 * float(truth.abs().max()))
    methods = set(result.methods.values())
    assert GAUSS_NEWTON in methods
    if kind == "hessian":  # tanh / GELU / attention downstream: the factor check must refuse
        assert OUTPUT_SPACE in methods


class _BatchCoupled(nn.Module):
    """Subtracts the batch mean after the first layer: samples are not independent."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc1(x))
        return self.fc2(h - h.mean(dim=0, keepdim=True))


def test_coupled_samples_fail_the_checks_and_fall_back_to_exact_unit_columns() -> None:
    torch.manual_seed(0)
    model = _BatchCoupled().double().eval()
    x, y = torch.randn(9, 4, dtype=F64), torch.randint(0, 3, (9,))
    data = Dataset((Batch(x, y),), source="memory", format="memory", available=9)
    op = CurvatureOperator(model, data, nn.functional.cross_entropy, micro_batch=9)
    result = exact_diagonal(op)
    assert result.methods["fc1"].startswith(UNIT_COLUMNS)
    assert "check failed" in result.methods["fc1"]
    truth = torch.diagonal(op.dense())
    got = torch.cat([result.values[b.name] for b in op.blocks])
    assert torch.allclose(got, truth, rtol=1e-10, atol=1e-14)
