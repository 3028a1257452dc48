"""Closed-form output Hessians of the built-in losses, and the exact diagonals that use them.

Truth: the Hessian of the loss as written with respect to all outputs of the batch, by double
backward (``torch.autograd.functional.hessian``), in float64; the layer diagonals against the
element-by-element double-backward loop (one second derivative per parameter).
"""

from __future__ import annotations

import doctest
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hesscli.batches import Batch, Dataset
from hesscli.engine import layer_outputs, output_curvature
from hesscli.engine.diagonal import GAUSS_NEWTON, OUTPUT_SPACE, exact_diagonal
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.output_curvature import IGNORE_INDEX, output_hessian_of
from hesscli.loading.losses import BUILTIN_LOSSES, BuiltinLoss
from tests.cases import open_sample
from tests.conftest import REPO
from tests.dense import dense_ggn, flat_parameters, outputs_at, worst

F64 = torch.float64
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _autograd_blocks(loss: LossFn, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample ``(b, m, m)`` blocks of the full output Hessian by double backward.

    Also asserts that the full Hessian is block diagonal over samples (what the closed forms and
    the fast route assume), so a coupling between samples cannot hide.
    """
    b, m = outputs.shape[0], outputs[0].numel()
    full = torch.autograd.functional.hessian(
        lambda flat: loss(flat.reshape(outputs.shape), targets), outputs.detach().reshape(-1)
    ).reshape(b, m, b, m)
    blocks = torch.diagonal(full, dim1=0, dim2=2).permute(2, 0, 1)
    off = full.clone()
    off[torch.arange(b), :, torch.arange(b), :] = 0
    assert off.abs().max() == 0, "the loss couples samples"
    return blocks


def _labels(shape: tuple[int, ...], classes: int, seed: int, padding: int = 0) -> torch.Tensor:
    labels = torch.randint(0, classes, shape, generator=_gen(seed))
    flat = labels.view(-1)
    flat[torch.randperm(flat.numel(), generator=_gen(seed + 1))[:padding]] = IGNORE_INDEX
    return labels


def _probabilities(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.softmax(torch.randn(shape, generator=_gen(seed), dtype=F64), dim=1)


def _x(*shape: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=_gen(seed), dtype=F64)


def _huber_targets() -> tuple[torch.Tensor, torch.Tensor]:
    outputs = _x(6, 3, seed=5)
    targets = outputs + _x(6, 3, seed=6, scale=1.5)  # errors on both sides of δ = 1
    targets[0, 0] = outputs[0, 0]  # a zero error, where autograd differentiates |·| to 0
    return outputs, targets


# -- closed forms against double backward -----------------------------------------------------
CLOSED_FORMS = [
    ("cross_entropy", _x(6, 4), _labels((6,), 4, seed=1)),
    ("cross_entropy-padded", _x(6, 4), _labels((6,), 4, seed=2, padding=2)),
    ("cross_entropy-sequence", _x(5, 3, 4, seed=3), _labels((5, 4), 3, seed=4, padding=5)),
    ("cross_entropy-image", _x(3, 3, 2, 2, seed=7), _labels((3, 2, 2), 3, seed=8, padding=3)),
    ("cross_entropy-probabilities", _x(6, 4), _probabilities((6, 4), seed=9)),
    ("cross_entropy-sequence-probabilities", _x(4, 3, 5), _probabilities((4, 3, 5), seed=10)),
    ("nll", torch.log_softmax(_x(6, 4), dim=1), _labels((6,), 4, seed=11, padding=1)),
    ("nll-sequence", torch.log_softmax(_x(4, 3, 5), dim=1), _labels((4, 5), 3, seed=12)),
    ("mse", _x(6, 3), _x(6, 3, seed=13)),
    ("mse-sequence", _x(4, 2, 3), _x(4, 2, 3, seed=14)),
    ("bce_with_logits", _x(6, 3), torch.rand(6, 3, generator=_gen(15), dtype=F64)),
    ("bce_with_logits-sequence", _x(4, 2, 3), torch.rand(4, 2, 3, generator=_gen(16), dtype=F64)),
    ("huber", *_huber_targets()),
    ("token_cross_entropy", _x(5, 4, 3, seed=17), _labels((5, 4), 3, seed=18, padding=4)),
    ("next_token_cross_entropy", _x(5, 4, 3, seed=19), _labels((5, 4), 3, seed=20, padding=4)),
]


@pytest.mark.parametrize(
    ("name", "outputs", "targets"), CLOSED_FORMS, ids=[c[0] for c in CLOSED_FORMS]
)
def test_closed_form_equals_the_double_backward_output_hessian(name, outputs, targets) -> None:
    loss = BUILTIN_LOSSES[name.split("-")[0]]
    closed = output_hessian_of(loss)
    assert closed is not None
    got = closed(outputs, targets)
    expected = _autograd_blocks(loss, outputs, targets)
    m = outputs[0].numel()
    assert got.shape == (outputs.shape[0], m, m) and got.dtype == F64
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15), worst(got, expected)


def test_padding_rows_are_zero_and_the_mean_is_over_real_targets() -> None:
    outputs, targets = _x(4, 3), torch.tensor([0, IGNORE_INDEX, 2, IGNORE_INDEX])
    got = output_curvature.cross_entropy_hessian(outputs, targets)
    assert got[1].abs().max() == 0 and got[3].abs().max() == 0
    p = torch.softmax(outputs[0], dim=0)
    assert torch.allclose(got[0], (torch.diag(p) - torch.outer(p, p)) / 2, rtol=1e-14)


def test_all_padding_gives_the_zero_curvature_autograd_gives() -> None:
    outputs, targets = _x(3, 4), torch.full((3,), IGNORE_INDEX)
    got = output_curvature.cross_entropy_hessian(outputs, targets)
    assert torch.equal(got, _autograd_blocks(BUILTIN_LOSSES["cross_entropy"], outputs, targets))
    assert got.abs().max() == 0


def test_float32_outputs_give_float64_curvature() -> None:
    outputs, targets = _x(5, 4).float(), _labels((5,), 4, seed=3)
    got = output_curvature.cross_entropy_hessian(outputs, targets)
    expected = _autograd_blocks(BUILTIN_LOSSES["cross_entropy"], outputs.double(), targets)
    assert got.dtype == F64
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9), worst(got, expected)


@pytest.mark.parametrize(
    ("fn", "outputs", "targets"),
    [
        (output_curvature.mse_hessian, torch.zeros(4, 1), torch.zeros(4)),
        (output_curvature.huber_hessian, torch.zeros(4, 3), torch.zeros(4, 1)),
        (output_curvature.bce_with_logits_hessian, torch.zeros(4, 3), torch.zeros(4, 3, 1)),
        (output_curvature.cross_entropy_hessian, torch.zeros(4, 3), torch.zeros(4, 2).long()),
        (output_curvature.cross_entropy_hessian, torch.zeros(4, 3), torch.zeros(4, 2)),
        (output_curvature.nll_hessian, torch.zeros(4, 3), torch.zeros(5).long()),
    ],
)
def test_shapes_a_closed_form_does_not_cover_give_none(fn, outputs, targets) -> None:
    assert fn(outputs, targets) is None


def test_the_protocol_is_an_attribute_of_the_loss() -> None:
    assert all(output_hessian_of(fn) is not None for fn in BUILTIN_LOSSES.values())
    assert output_hessian_of(F.cross_entropy) is None  # torch's own function is left alone
    assert not hasattr(F.cross_entropy, "output_hessian")
    assert output_hessian_of(lambda o, t: (o - t).square().mean()) is None


def test_docstring_example_runs() -> None:
    result = doctest.testmod(output_curvature, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- exact layer diagonals through the closed forms ---------------------------------------
def _double_loop(
    model: nn.Module, loss: LossFn, x: torch.Tensor, y: torch.Tensor, parameter: str
) -> torch.Tensor:
    """∂²L/∂θᵢ² one element at a time over the whole batch: the naive reference."""
    p = model.get_parameter(parameter)
    (g,) = torch.autograd.grad(loss(model(x), y), p, create_graph=True)
    flat = g.reshape(-1)
    out = torch.empty(flat.numel(), dtype=F64)
    for i in range(flat.numel()):
        (second,) = torch.autograd.grad(flat[i], p, retain_graph=True)
        out[i] = second.reshape(-1)[i]
    return out


def _split(op: CurvatureOperator, values: torch.Tensor, block: str) -> dict[str, torch.Tensor]:
    b = op.layout.block(block)
    out, offset = {}, 0
    for slot in op.layout.slots:
        if slot.name in b.parameters:
            out[slot.name] = values[offset : offset + slot.stop - slot.start]
            offset += slot.stop - slot.start
    return out


def _operator(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: LossFn, **kwargs: object
) -> CurvatureOperator:
    data = Dataset((Batch(x, y),), source="memory", format="memory", available=x.shape[0])
    return CurvatureOperator(model, data, loss, **kwargs)


@pytest.fixture
def no_differentiated_output_hessians(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if the fast route differentiates the loss for H_out instead of its closed form."""

    def refuse(*_args: object) -> torch.Tensor:
        pytest.fail("the output Hessian was differentiated, not taken from the closed form")

    monkeypatch.setattr(layer_outputs, "_differentiated_output_hessians", refuse)


def _relu_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 4))


@pytest.mark.usefixtures("no_differentiated_output_hessians")
@pytest.mark.parametrize(
    ("padding", "micro_batch"),
    # padding: one micro-batch, whose mean over real targets is the whole batch's
    [(0, 11), (0, 4), (3, 11)],
)
def test_relu_mlp_cross_entropy_diagonal_equals_the_double_loop(
    padding: int, micro_batch: int
) -> None:
    model = _relu_mlp().double().eval()
    x, y = _x(11, 6, seed=20), _labels((11,), 4, seed=21, padding=padding)
    loss = BUILTIN_LOSSES["cross_entropy"]
    op = _operator(model, x, y, loss, micro_batch=micro_batch)
    result = exact_diagonal(op)
    for block in op.blocks:
        assert result.methods[block.name] == GAUSS_NEWTON
        for parameter, values in _split(op, result.values[block.name], block.name).items():
            loop = _double_loop(model, loss, x, y, parameter)
            assert torch.allclose(values, loop, rtol=1e-11, atol=1e-15), worst(values, loop)
    assert result.products == 0
    # m pullbacks per micro-batch and layer, and no products spent on the output Hessians
    micro_batches = -(-11 // micro_batch)
    assert result.output_products == 4 * micro_batches * len(op.blocks)


@pytest.mark.usefixtures("no_differentiated_output_hessians")
def test_seed_network_mse_diagonal_equals_the_double_loop() -> None:
    op = open_sample("seed_ann", dtype="float64")
    (batch,) = op.dataset.batches
    x, y = batch.inputs.double(), batch.targets.double()
    result = exact_diagonal(op)
    for block in ("fc1", "fc2"):
        assert result.methods[block] == GAUSS_NEWTON
        for parameter, values in _split(op, result.values[block], block).items():
            loop = _double_loop(op.model, BUILTIN_LOSSES["mse"], x, y, parameter)
            assert torch.allclose(values, loop, rtol=1e-12, atol=1e-15), worst(values, loop)


class _Sequence(nn.Module):
    """Per-token logits laid out ``(N, C, T)``, as ``F.cross_entropy`` takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(x))).transpose(1, 2)


@pytest.mark.usefixtures("no_differentiated_output_hessians")
def test_sequence_cross_entropy_with_padding_equals_the_double_loop() -> None:
    torch.manual_seed(3)
    model = _Sequence().double().eval()
    x, y = _x(5, 4, 4, seed=30), _labels((5, 4), 3, seed=31, padding=6)
    loss = BUILTIN_LOSSES["cross_entropy"]
    op = _operator(model, x, y, loss, micro_batch=5)
    result = exact_diagonal(op)
    for block in op.blocks:
        assert result.methods[block.name] == GAUSS_NEWTON
        for parameter, values in _split(op, result.values[block.name], block.name).items():
            loop = _double_loop(model, loss, x, y, parameter)
            assert torch.allclose(values, loop, rtol=1e-11, atol=1e-15), worst(values, loop)


@pytest.mark.usefixtures("no_differentiated_output_hessians")
@pytest.mark.parametrize("name", ["bce_with_logits", "huber", "cross_entropy"])
def test_tanh_network_ggn_diagonal_equals_the_dense_ggn(name: str) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x = _x(9, 4, seed=40)
    if name == "cross_entropy":
        y = _labels((9,), 3, seed=41)
    else:
        y = torch.rand(9, 3, generator=_gen(42), dtype=F64) * (2 if name == "huber" else 1)
    loss = BUILTIN_LOSSES[name]
    op = _operator(model, x, y, loss, kind="ggn", micro_batch=4)
    names = [n for n, _ in model.named_parameters()]
    ggn = dense_ggn(
        outputs_at(model, names, x), lambda o: loss(o, y), flat_parameters(model, names)
    )
    truth = torch.diagonal(ggn)
    result = exact_diagonal(op)
    got = torch.cat([result.values[b.name] for b in op.blocks])
    assert set(result.methods.values()) == {GAUSS_NEWTON}
    assert torch.allclose(got, truth, rtol=1e-11, atol=1e-15), worst(got, truth)


# -- without a closed form ---------------------------------------------------------------------
def _log_cosh(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.log(torch.cosh(outputs - targets)).mean()


def test_a_custom_loss_is_differentiated_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = layer_outputs._differentiated_output_hessians

    def spy(*args: object) -> torch.Tensor:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(layer_outputs, "_differentiated_output_hessians", spy)
    model = _relu_mlp(1).double().eval()
    x, y = _x(8, 6, seed=50), _x(8, 4, seed=51)
    op = _operator(model, x, y, _log_cosh, micro_batch=8)
    result = exact_diagonal(op, blocks=["2"])
    assert calls and result.methods["2"] == GAUSS_NEWTON
    for parameter, values in _split(op, result.values["2"], "2").items():
        loop = _double_loop(model, _log_cosh, x, y, parameter)
        assert torch.allclose(values, loop, rtol=1e-11, atol=1e-15), worst(values, loop)
    # the products spent on H_out are counted: m of them, besides the m pullbacks
    assert result.output_products == 2 * 4


def test_plain_cross_entropy_and_the_builtin_give_the_same_diagonal() -> None:
    model = _relu_mlp(2).double().eval()
    x, y = _x(7, 6, seed=60), _labels((7,), 4, seed=61, padding=2)
    plain = exact_diagonal(_operator(model, x, y, F.cross_entropy, micro_batch=7))
    builtin = exact_diagonal(_operator(model, x, y, BUILTIN_LOSSES["cross_entropy"]))
    for name, values in builtin.values.items():
        assert torch.allclose(values, plain.values[name], rtol=1e-12, atol=1e-16)


def test_a_closed_form_declining_the_shapes_falls_back() -> None:
    declining = BuiltinLoss(BUILTIN_LOSSES["mse"], lambda _o, _t: None)
    model = _relu_mlp(3).double().eval()
    x, y = _x(6, 6, seed=70), _x(6, 4, seed=71)
    result = exact_diagonal(_operator(model, x, y, declining, micro_batch=6), blocks=["4"])
    truth = exact_diagonal(_operator(model, x, y, BUILTIN_LOSSES["mse"]), blocks=["4"])
    assert torch.allclose(result.values["4"], truth.values["4"], rtol=1e-12, atol=1e-16)


def test_a_wrong_closed_form_is_caught_by_the_check() -> None:
    """A loss whose closed form is off by 10 % must not give a silently wrong diagonal."""
    mse = BUILTIN_LOSSES["mse"]
    wrong = BuiltinLoss(mse, lambda o, t: 1.1 * output_curvature.mse_hessian(o, t))
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().eval()
    x, y = _x(6, 3, seed=80), _x(6, 2, seed=81)
    op = _operator(model, x, y, wrong, micro_batch=6)
    result = exact_diagonal(op)
    # the factor's check fails; output-space products differentiate the loss itself
    assert set(result.methods.values()) == {OUTPUT_SPACE}, result.methods
    for block in op.blocks:
        for parameter, values in _split(op, result.values[block.name], block.name).items():
            loop = _double_loop(model, mse, x, y, parameter)
            assert torch.allclose(values, loop, rtol=1e-10, atol=1e-15), worst(values, loop)


# -- first-use costs ----------------------------------------------------------------------
def test_the_fast_route_imports_neither_dynamo_nor_sympy() -> None:
    """``torch.func``'s first use imports ``torch._dynamo`` and ``grad_outputs`` tensors import
    sympy: over a second and a half together, for a route that needs neither."""
    code = """
import sys, torch
from torch import nn
from hesscli.engine.diagonal import exact_diagonal
from hesscli.engine.operator import CurvatureOperator
from hesscli.batches import Batch, Dataset
from hesscli.loading.losses import BUILTIN_LOSSES
model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
op = CurvatureOperator(model, Dataset((Batch(x, y),), source="m", format="m", available=8),
                       BUILTIN_LOSSES["cross_entropy"])
before = {m for m in ("torch._dynamo", "sympy") if m in sys.modules}
result = exact_diagonal(op)
assert set(result.methods.values()) == {"gauss-newton factor"}, result.methods
print(sorted({m for m in ("torch._dynamo", "sympy") if m in sys.modules} - before))
"""
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]", run.stdout
