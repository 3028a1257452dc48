"""The engine's loss and gradient: micro-batch weighting bⱼ/N equals one pass over all N."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hesscli.batches import Batch, Dataset
from hesscli.engine.functional import micro_batches, prepare_model
from hesscli.engine.gradient import loss_and_gradient
from hesscli.engine.params import list_layers
from hesscli.errors import NumericalError
from hesscli.loading.losses import BUILTIN_LOSSES

CPU, F64 = torch.device("cpu"), torch.float64


def _problem(samples: int, seed: int = 0) -> tuple[nn.Module, Dataset]:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(samples, 4, generator=generator, dtype=F64)
    y = torch.randint(0, 3, (samples,), generator=generator)
    return model, Dataset((Batch(x, y),), "memory", "pt", samples)


def _reference(model: nn.Module, dataset: Dataset) -> tuple[float, float]:
    """Loss and gradient norm by plain autograd on the mean loss over all samples."""
    batch = dataset.first
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(batch.inputs), batch.targets)
    loss.backward()
    norm = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
    return loss.item(), norm.item()


def _gradient(model: nn.Module, dataset: Dataset, micro_batch: int | None):
    return loss_and_gradient(
        model,
        dataset,
        BUILTIN_LOSSES["cross_entropy"],
        layers=list_layers(model),
        micro_batch=micro_batch,
        device=CPU,
        dtype=F64,
    )


@settings(max_examples=25, deadline=None)
@given(samples=st.integers(1, 23), size=st.integers(1, 30), seed=st.integers(0, 10_000))
def test_any_micro_batch_split_equals_one_pass(samples, size, seed):
    model, dataset = _problem(samples, seed)
    loss, norm = _reference(model, dataset)
    result = _gradient(model, dataset, size)
    assert result.loss == pytest.approx(loss, rel=1e-12)
    assert result.grad_norm == pytest.approx(norm, rel=1e-12)
    assert result.micro_batches == -(-samples // size)


def test_weights_are_sizes_over_total_not_one_over_count():
    _, dataset = _problem(10)
    parts = list(micro_batches(dataset, 4))
    assert [p.size for _, p, _ in parts] == [4, 4, 2]
    assert [w for _, _, w in parts] == [0.4, 0.4, 0.2]
    assert [first for first, _, _ in parts] == [0, 4, 8]


def test_batches_from_a_factory_are_weighted_by_their_sizes():
    model, whole = _problem(9)
    x, y = whole.first.inputs, whole.first.targets
    split = Dataset((Batch(x[:2], y[:2]), Batch(x[2:], y[2:])), "memory", "factory", 9)
    loss, norm = _reference(model, whole)
    result = _gradient(model, split, 5)
    assert result.micro_batches == 3  # 2 | 5 + 2
    assert (result.loss, result.grad_norm) == (pytest.approx(loss), pytest.approx(norm))


def test_per_layer_norms_compose_to_the_total():
    model, dataset = _problem(8)
    result = _gradient(model, dataset, None)
    squares = sum(v**2 for v in result.layer_grad_norms.values())
    assert squares == pytest.approx(result.grad_norm**2, rel=1e-12)
    assert set(result.layer_grad_norms) == {"0", "2"}


def test_frozen_parameters_are_left_out():
    model, dataset = _problem(8)
    model[0].weight.requires_grad_(False)
    result = _gradient(model, dataset, None)
    model.zero_grad()
    batch = dataset.first
    nn.functional.cross_entropy(model(batch.inputs), batch.targets).backward()
    expected = torch.cat([model[0].bias.grad, model[2].weight.grad.reshape(-1), model[2].bias.grad])
    assert result.grad_norm == pytest.approx(float(expected.norm()), rel=1e-12)


def test_non_finite_loss_names_the_samples():
    model, dataset = _problem(6)
    x = dataset.first.inputs.clone()
    x[4, 0] = float("nan")
    bad = Dataset((Batch(x, dataset.first.targets),), "memory", "pt", 6)
    with pytest.raises(NumericalError, match=r"the loss is nan on samples 4-5"):
        _gradient(model, bad, 2)


def test_prepare_model_casts_and_sets_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    prepare_model(model, device=CPU, dtype=F64, train_mode=False)
    assert model[0].weight.dtype == F64
    assert not model.training
