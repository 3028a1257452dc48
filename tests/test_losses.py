"""Losses: inference from targets, fit checks, custom losses, and the batch-mean convention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hesscli.engine.output_curvature import output_hessian_of
from hesscli.errors import LossError
from hesscli.loading.losses import (
    BUILTIN_LOSSES,
    BuiltinLoss,
    check_fit,
    infer_loss_name,
    resolve_loss,
)

HERE = Path(".")


@pytest.mark.parametrize(
    ("targets", "name"),
    [
        (torch.tensor([0, 2]), "cross_entropy"),
        (torch.tensor([[0.5], [1.0]]), "mse"),
        (torch.tensor([[True], [False]]), "bce_with_logits"),
    ],
)
def test_inference(targets, name):
    assert infer_loss_name(targets)[0] == name
    assert resolve_loss(None, targets, base=HERE, how="default").inferred


def test_builtins_equal_torch_mean_reduction():
    torch.manual_seed(0)
    out = torch.randn(5, 3, dtype=torch.float64)
    target = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(BUILTIN_LOSSES["mse"](out, target), F.mse_loss(out, target))
    assert torch.allclose(BUILTIN_LOSSES["huber"](out, target), F.huber_loss(out, target))


def test_mse_is_forward_over_reverse_safe():
    # jvp of grad through F.mse_loss(reduction="mean") raises on current torch (#123996).
    from torch.func import grad, jvp

    target = torch.randn(4, 2, dtype=torch.float64)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return BUILTIN_LOSSES["mse"](w * 2.0, target)

    w = torch.randn(4, 2, dtype=torch.float64)
    _, hvp = jvp(grad(loss), (w,), (torch.ones_like(w),))
    assert torch.allclose(hvp, torch.full_like(w, 8.0 / 8))


@pytest.mark.parametrize(
    ("name", "outputs", "targets", "message"),
    [
        ("cross_entropy", torch.zeros(4, 3), torch.tensor([0, 1, 2, 3]), r"\[0, 3\].*3 classes"),
        ("cross_entropy", torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.long), "do not fit"),
        ("mse", torch.zeros(4, 1), torch.zeros(4), r"\(4, 1\) but targets have shape \(4,\)"),
        ("mse", torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]), "floating-point targets"),
        ("bce_with_logits", torch.zeros(2, 1), torch.tensor([[2.0], [0.0]]), r"\[0, 1\]"),
        ("nll", torch.zeros(2, 3), torch.zeros(2, 3), "class labels|same shape"),
    ],
)
def test_fit_errors(name, outputs, targets, message):
    loss = resolve_loss(name, targets, base=HERE, how="option")
    with pytest.raises(LossError, match=message):
        check_fit(loss, outputs, targets)


def test_custom_loss_from_file(tmp_path):
    (tmp_path / "losses.py").write_text(
        "def l1(outputs, targets):\n    return (outputs - targets).abs().mean()\n"
        "def broken(outputs, targets):\n    return outputs - targets\n"
    )
    loss = resolve_loss("losses.py:l1", torch.zeros(2), base=tmp_path, how="option")
    check_fit(loss, torch.ones(2, 1), torch.zeros(2, 1))
    assert float(loss.fn(torch.ones(2), torch.zeros(2))) == 1.0
    broken = resolve_loss("losses.py:broken", torch.zeros(2), base=tmp_path, how="option")
    with pytest.raises(LossError, match="not a scalar"):
        check_fit(broken, torch.ones(2, 1), torch.zeros(2, 1))


def test_unknown_loss_lists_builtins():
    with pytest.raises(LossError, match=r"unknown loss 'hinge'.*cross_entropy, mse"):
        resolve_loss("hinge", torch.zeros(2), base=HERE, how="option")


def _reference(name: str):
    """The loss each built-in must compute, written independently of hesscli."""
    return {
        "cross_entropy": F.cross_entropy,
        "nll": F.nll_loss,
        "mse": F.mse_loss,
        "bce_with_logits": F.binary_cross_entropy_with_logits,
        "huber": F.huber_loss,
        # logits (b, T, C): torch's own layout is (b, C, T); the causal LM scores t against t + 1
        "token_cross_entropy": lambda x, y: F.cross_entropy(x.transpose(1, 2), y),
        "next_token_cross_entropy": lambda x, y: F.cross_entropy(
            x[:, :-1].transpose(1, 2), y[:, 1:]
        ),
    }[name]


def _loss_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    outputs = 2 * torch.randn(6, 4, 3, generator=generator, dtype=torch.float64)
    if name in {"cross_entropy", "nll"}:
        targets = torch.randint(0, 4, (6, 3), generator=generator)
        targets[0, 1] = targets[4, 2] = -100  # padding
        return (outputs.log_softmax(1) if name == "nll" else outputs), targets
    if name in {"token_cross_entropy", "next_token_cross_entropy"}:  # logits (6, T=4, C=3)
        targets = torch.randint(0, 3, (6, 4), generator=generator)
        targets[0, 1] = targets[4, 2] = targets[5, 0] = -100  # padding
        return outputs, targets
    return outputs, torch.rand(6, 4, 3, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("name", list(BUILTIN_LOSSES))
def test_builtins_compute_the_same_loss_and_gradients_as_torch(name):
    outputs, targets = _loss_inputs(name)
    ours = outputs.clone().requires_grad_(True)
    theirs = outputs.clone().requires_grad_(True)
    value, reference = BUILTIN_LOSSES[name](ours, targets), _reference(name)(theirs, targets)
    assert torch.allclose(value, reference, rtol=1e-14, atol=0)
    (g,) = torch.autograd.grad(value, ours)
    (expected,) = torch.autograd.grad(reference, theirs)
    assert torch.allclose(g, expected, rtol=1e-13, atol=1e-17)


@pytest.mark.parametrize("name", ["cross_entropy", "nll", "bce_with_logits"])
def test_builtins_that_are_torch_functions_stay_them_exactly(name):
    """Wrapping a torch function for its closed form changes neither values nor the graph."""
    outputs, targets = _loss_inputs(name)
    value = BUILTIN_LOSSES[name](outputs.requires_grad_(True), targets)
    reference = _reference(name)(outputs, targets.to(outputs.dtype) if name[0] == "b" else targets)
    assert torch.equal(value, reference)
    assert type(value.grad_fn) is type(reference.grad_fn)


@pytest.mark.parametrize("name", list(BUILTIN_LOSSES))
def test_builtins_carry_their_closed_form_output_hessian(name):
    loss = BUILTIN_LOSSES[name]
    assert isinstance(loss, BuiltinLoss)
    closed = output_hessian_of(loss)
    assert closed is not None
    outputs, targets = _loss_inputs(name)
    assert closed(outputs, targets).shape == (6, 12, 12)
    assert resolve_loss(name, targets, base=HERE, how="option").fn is loss
