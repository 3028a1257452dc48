"""The engine on the shipped sample models (real checkpoints, loaded as the CLI loads them),
and on hypothesis-generated small architectures, against independent float64 truth."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hesscli.batches import Batch, Dataset
from hesscli.engine.functional import to_device
from hesscli.engine.operator import CurvatureOperator
from hesscli.errors import ConfigError, LayerError
from hesscli.loading.losses import BUILTIN_LOSSES
from tests import dense
from tests.cases import open_sample

F64 = torch.float64


def _all_samples(op: CurvatureOperator) -> tuple[object, torch.Tensor]:
    """Every sample in one batch, on the operator's device and dtype."""
    batches = op.dataset.batches
    assert len(batches) == 1
    batch = to_device(batches[0], device=op.device, dtype=op.dtype)
    return batch.inputs, batch.targets


def test_seed_network_full_hessian_matches_the_double_loop():
    """The classic 3→4→5 net: every entry ∂²L/∂θᵢ∂θⱼ by an element-by-element double loop
    of second derivatives, against the engine's dense Hessian over uneven micro-batches."""
    op = open_sample("seed_ann", dtype="float64", micro_batch=7)
    model, names = op.model, op.layout.names
    inputs, targets = _all_samples(op)
    params = [model.get_parameter(n) for n in names]
    loss = op.loss_fn(model(inputs), targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat_grads = [g.reshape(-1)[i] for g in grads for i in range(g.numel())]
    loop = torch.zeros(op.size, op.size, dtype=F64)
    for row, g in enumerate(flat_grads):
        pieces = torch.autograd.grad(g, params, retain_graph=True)
        loop[row] = torch.cat([p.reshape(-1) for p in pieces])
    engine = op.dense()
    assert op.size == 41
    assert dense.relative(engine, loop) < 1e-13, dense.worst(engine, loop)
    at = dense.flat_parameters(model, names)
    fn = dense.loss_at(model, names, inputs, targets, op.loss_fn)
    fd = dense.fd_columns(fn, at, torch.eye(op.size, dtype=F64))
    assert dense.relative(fd, loop) < 1e-7, dense.worst(fd, loop)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "tiny_transformer"])
def test_sample_model_products_equal_double_backward(name, kind):
    """Real checkpoints, uneven micro-batches: H·V (or GGN·V) against one-pass double backward
    over all samples, itself cross-checked by finite differences (Hessian, smooth models)."""
    op = open_sample(name, dtype="float64", micro_batch=100, curvature=kind, max_samples=250)
    model, names = op.model, op.layout.names
    inputs, targets = _all_samples(op)
    at = dense.flat_parameters(model, names)
    vectors = torch.randn(op.size, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    actual = op.matmat(vectors)
    if kind == "hessian":
        fn = dense.loss_at(model, names, inputs, targets, op.loss_fn)
        expected = dense.hessian_columns(fn, at, vectors)
        if name == "tiny_transformer":  # smooth (GELU), so finite differences are sharp
            fd = dense.fd_columns(fn, at, vectors)
            assert dense.relative(fd, expected) < 1e-5, dense.worst(fd, expected)
    else:
        outputs = dense.outputs_at(model, names, inputs)
        out = outputs(at)
        jacobian = torch.autograd.functional.jacobian(outputs, at).reshape(out.numel(), -1)
        h_out = torch.autograd.functional.hessian(
            lambda o: op.loss_fn(o.reshape(out.shape), targets), out.detach().reshape(-1)
        )
        expected = jacobian.T @ (h_out @ (jacobian @ vectors))  # J by reverse mode only
    assert dense.relative(actual, expected) < 1e-10, dense.worst(actual, expected)
    assert op.route is not None
    assert op.route.symmetry < 1e-10


def test_float32_agrees_with_float64():
    v64 = open_sample("digits_cnn", dtype="float64", micro_batch=300)
    v32 = open_sample("digits_cnn", dtype="float32", micro_batch=300)
    vectors = torch.randn(v64.size, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    hi = v64.matmat(vectors)
    lo = v32.matmat(vectors.float())
    assert lo.dtype == torch.float32
    assert dense.relative(lo.double(), hi) < 1e-4


def test_layer_selection_gives_one_block_per_layer():
    op = open_sample("tiny_transformer", dtype="float64", layers=["attn.*", "head"], max_samples=40)
    assert [b.name for b in op.blocks] == ["attn.qkv", "attn.out", "head"]
    full = open_sample("tiny_transformer", dtype="float64", max_samples=40)
    vectors = torch.randn(full.size, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    big = full.matmat(vectors)
    for block in op.blocks:
        inner = full.layout.block(block.name)
        rows = slice(inner.start, inner.stop)
        sub = torch.zeros(op.size, 2, dtype=F64)
        sub[block.start : block.stop] = vectors[rows]
        masked = torch.zeros_like(vectors)
        masked[rows] = vectors[rows]
        expected = full.matmat(masked)[rows]
        actual = op.block_matmat(sub)[block.start : block.stop]
        assert dense.relative(actual, expected) < 1e-10, block.name
    assert big.shape == vectors.shape


def test_dropout_model_runs_in_eval_mode_by_default():
    op = open_sample("digits_mlp", max_samples=64)
    first = op.matvec(torch.ones(op.size))
    assert torch.equal(first, op.matvec(torch.ones(op.size)))


def test_api_rejects_unknown_settings_and_frozen_only_layers():
    with pytest.raises(ConfigError, match=r"unknown setting.*curvatur"):
        open_sample("seed_ann", curvatur="ggn")
    with pytest.raises(ConfigError, match="unknown --hvp-method 'fastest'"):
        open_sample("seed_ann", hvp_method="fastest")
    with pytest.raises(LayerError, match="no layer or parameter matches --layer 'fc3'"):
        open_sample("seed_ann", layers=["fc3"])


ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


@st.composite
def architectures(draw: st.DrawFn) -> tuple[nn.Module, Dataset, str, int, str]:
    """A small random MLP (optional LayerNorm), loss, sample count and micro-batch size."""
    widths = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    activation = draw(st.sampled_from(sorted(ACTIVATIONS)))
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=draw(st.booleans())))
        if i < len(widths) - 2:
            if draw(st.booleans()) and b > 1:
                layers.append(nn.LayerNorm(b))
            layers.append(ACTIVATIONS[activation]())
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = nn.Sequential(*layers).double().eval()
    samples = draw(st.integers(1, 6))
    loss = draw(st.sampled_from(["mse", "cross_entropy"] if widths[-1] > 1 else ["mse"]))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, widths[0], generator=generator, dtype=F64)
    if loss == "mse":
        y = torch.randn(samples, widths[-1], generator=generator, dtype=F64)
    else:
        y = torch.randint(0, widths[-1], (samples,), generator=generator)
    data = Dataset((Batch(x, y),), "hypothesis", "memory", samples)
    return (
        model,
        data,
        loss,
        draw(st.integers(1, samples)),
        draw(st.sampled_from(["hessian", "ggn"])),
    )


@settings(max_examples=40, deadline=None)
@given(architectures())
def test_random_architectures_match_dense_truth(case):
    model, data, loss_name, micro_batch, kind = case
    loss = BUILTIN_LOSSES[loss_name]
    op = CurvatureOperator(model, data, loss, kind=kind, micro_batch=micro_batch)
    names = op.layout.names
    batch = data.first
    at = dense.flat_parameters(model, names)
    if kind == "hessian":
        expected = dense.dense_hessian(
            dense.loss_at(model, names, batch.inputs, batch.targets, loss), at
        )
    else:
        expected = dense.dense_ggn(
            dense.outputs_at(model, names, batch.inputs), lambda o: loss(o, batch.targets), at
        )
    actual = op.dense()
    assert dense.relative(actual, expected) < 1e-9, dense.worst(actual, expected)
