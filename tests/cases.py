"""The engine's case table: small models × losses × reductions, each with a float64 batch.

Every case is small enough (≤ a few hundred parameters) for a dense double-backward truth.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import hesscli
from hesscli.batches import Batch, Dataset
from hesscli.engine.operator import CurvatureOperator
from hesscli.loading.losses import BUILTIN_LOSSES
from tests.conftest import SAMPLES

sys.path.insert(0, str(SAMPLES / "tiny_transformer"))
from model import TinyTransformer

sys.path.pop(0)

F64 = torch.float64
#: The checkpoint file of each shipped sample model.
SAMPLE_CHECKPOINTS = {
    "seed_ann": "model.safetensors",
    "digits_mlp": "model.safetensors",
    "digits_cnn": "model.pt",
    "tiny_transformer": "model.safetensors",
}


def open_sample(name: str, **settings: object) -> CurvatureOperator:
    """The CLI's operator on a shipped sample model (its hesscli.toml supplies the rest)."""
    folder = SAMPLES / name
    return hesscli.curvature_operator(folder / SAMPLE_CHECKPOINTS[name], cwd=folder, **settings)


N = 7  # samples: prime, so most micro-batch sizes leave a smaller last micro-batch


@dataclass(frozen=True)
class Case:
    """A model, its data and its loss."""

    name: str
    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    reduction: str = "mean"

    def dataset(self) -> Dataset:
        """All samples as one in-memory batch."""
        return Dataset((Batch(self.inputs, self.targets),), self.name, "memory", N)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(N, *shape, generator=_gen(seed), dtype=F64)


def _labels(classes: int, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, classes, (N,), generator=_gen(seed))


def _init(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model.double().eval()


def _log_cosh(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A custom (non-built-in) loss: mean log-cosh error."""
    return torch.log(torch.cosh(outputs - targets)).mean()


def _sum_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="sum")


class _Tied(nn.Module):
    """Two layers sharing one weight matrix (stored once in named_parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.tanh(self.enc(x)))


class _Unused(nn.Module):
    """A layer whose parameters never reach the loss: zero curvature rows."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.spare = nn.Linear(2, 2)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _mlp(activation: nn.Module, seed: int) -> nn.Module:
    return _init(nn.Sequential(nn.Linear(4, 5), activation, nn.Linear(5, 3)), seed)


def _batchnorm() -> nn.Module:
    model = _init(nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 2)), 3)
    bn = model[1]
    bn.running_mean.copy_(torch.linspace(-0.5, 0.5, 5))
    bn.running_var.copy_(torch.linspace(0.5, 2.0, 5))
    return model


def _frozen() -> nn.Module:
    model = _mlp(nn.Tanh(), 5)
    model[0].requires_grad_(False)
    return model


def cases() -> list[Case]:
    """The table. Targets are fixed by seed, so every run sees the same numbers."""
    ce = BUILTIN_LOSSES["cross_entropy"]
    mse = BUILTIN_LOSSES["mse"]
    relu_data = _x(4, seed=11)
    return [
        Case("mlp-tanh/cross_entropy", _mlp(nn.Tanh(), 0), _x(4), _labels(3), ce),
        Case("mlp-relu/mse", _mlp(nn.ReLU(), 1), relu_data, _x(3, seed=4), mse),
        Case(
            "cnn/cross_entropy",
            _init(
                nn.Sequential(
                    nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
                ),
                2,
            ),
            _x(1, 6, 6),
            _labels(3),
            ce,
        ),
        Case(
            "batchnorm-eval/bce_with_logits",
            _batchnorm(),
            _x(4),
            torch.rand(N, 2, generator=_gen(5), dtype=F64),
            BUILTIN_LOSSES["bce_with_logits"],
        ),
        Case(
            "layernorm/nll",
            _init(
                nn.Sequential(
                    nn.Linear(4, 5), nn.LayerNorm(5), nn.Linear(5, 3), nn.LogSoftmax(dim=1)
                ),
                4,
            ),
            _x(4),
            _labels(3),
            BUILTIN_LOSSES["nll"],
        ),
        Case(
            "transformer/cross_entropy",
            _init(TinyTransformer(vocab=5, d_model=4, heads=2, seq_len=3, classes=2), 6),
            torch.randint(0, 5, (N, 3), generator=_gen(7)),
            _labels(2),
            ce,
        ),
        Case("tied/mse", _init(_Tied(), 7), _x(4), _x(4, seed=8), mse),
        Case("frozen/cross_entropy", _frozen(), _x(4), _labels(3), ce),
        Case("unused/cross_entropy", _init(_Unused(), 8), _x(4), _labels(3), ce),
        Case("mlp-tanh/huber", _mlp(nn.Tanh(), 9), _x(4), _x(3, seed=9), BUILTIN_LOSSES["huber"]),
        Case("mlp-tanh/F.huber_loss", _mlp(nn.Tanh(), 13), _x(4), _x(3, seed=13), F.huber_loss),
        Case("mlp-tanh/custom-log-cosh", _mlp(nn.Tanh(), 10), _x(4), _x(3, seed=10), _log_cosh),
        Case("mlp-tanh/cross_entropy-sum", _mlp(nn.Tanh(), 12), _x(4), _labels(3), _sum_ce, "sum"),
    ]


CASES = {case.name: case for case in cases()}
#: Cases with an operator that has no forward-mode rule (the engine must fall back).
NO_FORWARD_MODE = {"mlp-tanh/F.huber_loss"}
