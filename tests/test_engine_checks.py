"""The engine's run-time checks: route selection by rule, checked by double backward, finite
differences and symmetry on a slice of the first micro-batch, the determinism check, NaN
products and bad arguments. Faults are injected with custom autograd
functions whose derivative rules are missing or deliberately wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from hesscli.batches import Batch, Dataset
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.routes import FINITE, FORWARD, REVERSE
from hesscli.errors import (
    ConfigError,
    DeterminismError,
    DifferentiationError,
    NumericalError,
)
from hesscli.loading.losses import BUILTIN_LOSSES
from tests import dense

F64 = torch.float64


class _SinRules(torch.autograd.Function):
    """sin with correct derivative rules: a twice-differentiable backward and a forward-mode
    rule. The fault-injecting subclasses below each break one rule on purpose."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.sin()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * x.cos()

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return tangent * x.cos()


class _Sin(_SinRules):
    """Injected fault: a forward-mode rule wrong by 20 %, like the layer_norm bug."""

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 1.2 * tangent * x.cos()


class _NoForward(_SinRules):
    """Injected fault: the op has no forward-mode rule (as torch raises for such ops)."""

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("no forward-mode rule for this op")


class _OnceDifferentiable(_SinRules):
    """Injected fault: a backward that cannot itself be differentiated."""

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * x.cos()


class _Net(nn.Module):
    def __init__(self, activation: type[torch.autograd.Function] | None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        hidden = hidden.sin() if self.activation is None else self.activation.apply(hidden)
        return self.fc2(hidden)


def _setup(activation=None, samples: int = 6) -> tuple[nn.Module, Dataset]:
    torch.manual_seed(0)
    model = _Net(activation).double().eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(samples, 3, generator=generator, dtype=F64)
    y = torch.randn(samples, 2, generator=generator, dtype=F64)
    return model, Dataset((Batch(x, y),), "memory", "memory", samples)


MSE = BUILTIN_LOSSES["mse"]


def _truth(model: nn.Module, data: Dataset, kind: str = "hessian") -> torch.Tensor:
    """Double-backward truth with the plain (correct) sin in place of the injected op."""
    plain = _Net(None).double().eval()
    plain.load_state_dict(model.state_dict())
    batch = data.first
    names = [n for n, _ in plain.named_parameters()]
    at = dense.flat_parameters(plain, names)
    if kind == "hessian":
        return dense.dense_hessian(
            dense.loss_at(plain, names, batch.inputs, batch.targets, MSE), at
        )
    return dense.dense_ggn(
        dense.outputs_at(plain, names, batch.inputs), lambda o: MSE(o, batch.targets), at
    )


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_auto_uses_double_backward_out_of_reach_of_a_wrong_forward_mode_rule(kind):
    model, data = _setup(_Sin)
    op = CurvatureOperator(model, data, MSE, kind=kind, micro_batch=4)
    actual = op.dense()
    expected = _truth(model, data, kind)
    assert dense.relative(actual, expected) < 1e-10, dense.worst(actual, expected)
    assert op.route.route == REVERSE
    assert "double backward has no forward-mode rules" in op.route.reason
    assert FORWARD not in op.route.seconds  # the forward route never ran
    # Judged by the symmetry of its own first columns: no product spent on a check.
    assert "symmetric to" in op.route.reason
    assert op.route.symmetry < 1e-10
    assert op.counters.check_products == 0


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_forced_forward_route_that_is_right_is_checked_against_double_backward(kind):
    model, data = _setup(_SinRules)
    op = CurvatureOperator(model, data, MSE, kind=kind, method="forward", micro_batch=4)
    actual = op.dense()
    assert dense.relative(actual, _truth(model, data, kind)) < 1e-10
    assert op.route.route == FORWARD
    assert op.route.difference is not None and op.route.difference < 1e-10
    assert "agrees with double backward" in op.route.reason


def test_forcing_the_wrong_route_is_an_error():
    model, data = _setup(_Sin)
    op = CurvatureOperator(model, data, MSE, method="forward")
    with pytest.raises(NumericalError, match=r"forward-over-reverse products are wrong.*auto"):
        op.matvec(torch.ones(op.size, dtype=F64))


def test_unchecked_forward_route_really_is_wrong_here():
    """Guards the fault injection itself: without the check the wrong rule shows."""
    model, data = _setup(_Sin)
    op = CurvatureOperator(model, data, MSE, method="forward", verify=False)
    assert dense.relative(op.dense(), _truth(model, data)) > 1e-3


def test_missing_forward_mode_rule_does_not_matter_to_auto():
    model, data = _setup(_NoForward)
    op = CurvatureOperator(model, data, MSE, micro_batch=5)
    actual = op.dense()
    assert dense.relative(actual, _truth(model, data)) < 1e-10
    assert op.route.route == REVERSE


def test_forcing_forward_without_its_rule_names_the_rule():
    model, data = _setup(_NoForward)
    op = CurvatureOperator(model, data, MSE, method="forward")
    with pytest.raises(DifferentiationError, match=r"forward is unavailable.*no forward-mode rule"):
        op.matvec(torch.ones(op.size, dtype=F64))


def test_once_differentiable_backward_is_caught_by_symmetry():
    """torch silently drops the second derivative through a once_differentiable backward, in
    both routes alike, so they agree; the asymmetry of the result gives them away."""
    model, data = _setup(_OnceDifferentiable)
    op = CurvatureOperator(model, data, MSE, micro_batch=5)
    with pytest.raises(NumericalError, match=r"is not symmetric.*once_differentiable"):
        op.dense()
    assert op.counters.products == 0


class _CosTimes(torch.autograd.Function):
    """(g, x) ↦ g·cos(x): forward-mode rule given, no backward (no double backward above)."""

    generate_vmap_rule = True
    has_jvp = True

    @staticmethod
    def forward(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return g * x.cos()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("double backward is not implemented for this op")

    @staticmethod
    def jvp(ctx, g_tangent, x_tangent):
        g, x = ctx.saved_tensors
        if not _CosTimes.has_jvp:  # injected fault, switched on by one test
            raise NotImplementedError("no forward-mode rule for the backward op")
        return g_tangent * x.cos() - g * x.sin() * x_tangent


class _NoDoubleBackward(_SinRules):
    """Injected fault: sin whose backward is itself an op without a backward."""

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return _CosTimes.apply(grad, x)


def test_missing_double_backward_falls_back_to_forward_mode():
    model, data = _setup(_NoDoubleBackward)
    op = CurvatureOperator(model, data, MSE, micro_batch=5)
    actual = op.dense()
    assert dense.relative(actual, _truth(model, data)) < 1e-10
    assert op.route.route == FORWARD
    assert "reverse-over-reverse is unavailable" in op.route.reason
    assert "double backward is not implemented" in op.route.reason
    assert op.route.referee[FORWARD] < 1e-6  # recorded for the report


def test_forcing_an_unavailable_route_names_it():
    model, data = _setup(_NoDoubleBackward)
    op = CurvatureOperator(model, data, MSE, method="reverse")
    with pytest.raises(DifferentiationError, match="--hvp-method reverse is unavailable"):
        op.matvec(torch.ones(op.size, dtype=F64))


def test_no_second_order_route_falls_back_to_finite_differences(monkeypatch):
    monkeypatch.setattr(_CosTimes, "has_jvp", False)
    model, data = _setup(_NoDoubleBackward)
    op = CurvatureOperator(model, data, MSE, micro_batch=4)
    actual = op.dense()
    expected = _truth(model, data)
    assert op.route.route == FINITE
    reason = op.route.reason
    assert "double backward is not implemented" in reason
    assert "no forward-mode rule" in reason
    assert "estimated relative error" in reason
    # The stated error is of the size of the real one: neither hidden nor wildly pessimistic.
    error = dense.relative(actual, expected)
    assert 1e-12 < error < 1e-5
    assert error / 30 < op.route.error < error * 30, (error, op.route.error)


def test_finite_differences_on_request_match_the_hessian():
    model, data = _setup()
    op = CurvatureOperator(model, data, MSE, method="fd", micro_batch=4)
    expected = _truth(model, data)
    assert dense.relative(op.dense(), expected) < 1e-6
    assert op.route.route == FINITE
    assert op.route.reason.startswith("finite differences of the gradient; estimated")


def test_no_derivative_at_all_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_CosTimes, "has_jvp", False)
    monkeypatch.setattr(_NoDoubleBackward, "backward", staticmethod(_no_backward))
    model, data = _setup(_NoDoubleBackward)
    op = CurvatureOperator(model, data, MSE)
    with pytest.raises(DifferentiationError, match="cannot be differentiated") as info:
        op.matvec(torch.ones(op.size, dtype=F64))
    message = info.value.one_line()
    assert "finite differences failed" in message
    assert "no backward for this op" in message
    assert "\n" not in message


def _no_backward(ctx, grad):
    raise NotImplementedError("no backward for this op")


def test_dropout_in_training_mode_is_refused():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double().train()
    _, data = _setup()
    with pytest.raises(DeterminismError, match=r"dropout 1 \(p=0.5\).*drop --train-mode"):
        CurvatureOperator(model, data, MSE).matvec(torch.ones(26, dtype=F64))


def test_dropout_in_eval_mode_is_fine():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double().eval()
    _, data = _setup()
    op = CurvatureOperator(model, data, MSE)
    first = op.matvec(torch.ones(26, dtype=F64))
    assert torch.equal(first, op.matvec(torch.ones(26, dtype=F64)))


@pytest.mark.parametrize("micro_batch", [2, 100])
def test_batchnorm_in_training_mode_is_refused(micro_batch):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double().train()
    _, data = _setup()
    before = model[1].running_mean.clone()
    op = CurvatureOperator(model, data, MSE, micro_batch=micro_batch)
    with pytest.raises(DeterminismError, match="BatchNorm 1 is in training mode") as info:
        op.matvec(torch.ones(op.size, dtype=F64))
    assert ("micro-batches" in str(info.value)) == (micro_batch < 6)
    assert torch.equal(model[1].running_mean, before)


def test_random_forward_pass_is_refused():
    class _Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x) + 0.1 * torch.randn(x.shape[0], 2, dtype=x.dtype)

    _, data = _setup()
    op = CurvatureOperator(_Noisy().double().eval(), data, MSE)
    with pytest.raises(DeterminismError, match="changed between two evaluations"):
        op.matvec(torch.ones(op.size, dtype=F64))
    assert op.counters.products == 0


def test_infinite_curvature_names_the_samples_and_parameter():
    class _Sqrt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.sqrt(self.scale * x.square() + 0.0)[:, :2]

    _, data = _setup()
    op = CurvatureOperator(_Sqrt().double().eval(), data, MSE, micro_batch=4)
    with pytest.raises(NumericalError, match=r"NaN/Inf on samples 0-3 \(in scale\)"):
        op.matvec(torch.ones(1, dtype=F64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "fisher"}, "unknown curvature 'fisher'; use hessian or ggn"),
        ({"method": "fast"}, "unknown --hvp-method 'fast'; use auto, forward or reverse"),
        ({"micro_batch": 0}, "--micro-batch must be at least 1, got 0"),
        ({"reduction": "max"}, "unknown reduction 'max'; use mean or sum"),
        ({"verify": False}, "an unverified operator needs a forced method"),
    ],
)
def test_bad_arguments(kwargs, message):
    model, data = _setup()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CurvatureOperator(model, data, MSE, **kwargs)


def test_wrong_vector_length():
    model, data = _setup()
    op = CurvatureOperator(model, data, MSE)
    with pytest.raises(ValueError, match=r"expected \(26,\) or \(26, K\), got \(5,\)"):
        op.matvec(torch.ones(5, dtype=F64))


def test_graph_cache_is_reused_and_bounded():
    model, data = _setup(samples=9)
    vectors = torch.randn(26, 2, dtype=F64)
    cached = CurvatureOperator(model, data, MSE, method="reverse", micro_batch=4)
    uncached = CurvatureOperator(model, data, MSE, method="reverse", micro_batch=4, cache_bytes=0)
    first = cached.matmat(vectors)
    assert len(cached._cache) == 3
    assert cached.graph_bytes > 0
    assert torch.equal(cached.matmat(vectors), first)
    assert dense.relative(uncached.matmat(vectors), first) < 1e-14
    assert len(uncached._cache) == 0
    cached.release()
    assert len(cached._cache) == 0
    assert dense.relative(cached.matmat(vectors), first) < 1e-14


def test_once_differentiable_is_caught_between_single_column_passes():
    """Lanczos asks one column per pass: the first two columns, from two passes, are judged."""
    model, data = _setup(_OnceDifferentiable)
    op = CurvatureOperator(model, data, MSE, micro_batch=5)
    generator = torch.Generator().manual_seed(1)
    op.matvec(torch.randn(op.size, generator=generator, dtype=F64))
    assert "not judged yet" in op.route.reason
    with pytest.raises(NumericalError, match=r"is not symmetric.*once_differentiable"):
        op.matvec(torch.randn(op.size, generator=generator, dtype=F64))


def test_symmetric_curvature_is_judged_after_two_single_column_passes():
    model, data = _setup(_NoForward)
    op = CurvatureOperator(model, data, MSE, micro_batch=5)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2):
        op.matvec(torch.randn(op.size, generator=generator, dtype=F64))
    assert op.route.symmetry < 1e-10
    assert "symmetric to" in op.route.reason
    assert op.counters.check_products == 0
