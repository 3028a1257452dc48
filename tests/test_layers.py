"""Layer listing and ``--layer`` selection by module name, parameter name and glob."""

from __future__ import annotations

import pytest
from torch import nn

from hesscli.engine.params import ROOT, list_layers, select_layers
from hesscli.errors import LayerError


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer0 = nn.Linear(4, 4)
        self.layer1 = nn.Linear(4, 4)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(nn.init.ones_(nn.Linear(1, 1).weight.detach().clone()))
        self.encoder = Encoder()
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.norm.weight.requires_grad_(False)


def _names(layers):
    return [layer.name for layer in layers]


def test_layers_are_modules_that_own_parameters():
    layers = list_layers(Model())
    assert _names(layers) == [ROOT, "encoder.layer0", "encoder.layer1", "norm", "head"]
    norm = layers[3]
    assert (norm.numel, norm.trainable) == (8, 4)
    assert norm.parameters == ("norm.weight", "norm.bias")


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        ([], [ROOT, "encoder.layer0", "encoder.layer1", "norm", "head"]),
        (["head"], ["head"]),
        (["encoder.*"], ["encoder.layer0", "encoder.layer1"]),
        (["encoder"], ["encoder.layer0", "encoder.layer1"]),
        (["head.bias"], ["head.bias"]),
        (
            ["*.weight"],
            ["encoder.layer0.weight", "encoder.layer1.weight", "norm.weight", "head.weight"],
        ),
        (["head", "head", "norm"], ["head", "norm"]),
        (["scale"], ["scale"]),
    ],
)
def test_selection(patterns, expected):
    assert _names(select_layers(Model(), patterns)) == expected


def test_unknown_layer_suggests_the_closest_names():
    with pytest.raises(LayerError, match=r"--layer 'haed'.*closest names: head"):
        select_layers(Model(), ["haed"])


def test_tied_parameter_is_counted_once():
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    assert _names(list_layers(model)) == ["0"]
