"""Layers (modules that directly own parameters) and their selection by name or glob.

DESIGN.md: a *layer* is a module that directly owns trainable parameters; ``--layer`` accepts
module names, parameter names and glob patterns, and an unknown name is an error that lists the
closest existing names.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from torch import nn

from hesscli.errors import LayerError

ROOT = "<root>"


@dataclass(frozen=True)
class Layer:
    """A block of parameters reported together.

    Attributes:
        name: Module name (``fc2``), parameter name when one parameter was selected, or
            ``<root>`` for parameters owned by the model itself.
        type: The owning module's class name.
        parameters: Full parameter names (``fc2.weight``) in the block.
        numel: Number of scalar parameters.
        trainable: Number of those that require gradients.
    """

    name: str
    type: str
    parameters: tuple[str, ...]
    numel: int
    trainable: int


def list_layers(model: nn.Module) -> list[Layer]:
    """Every module that directly owns parameters, in definition order, frozen ones included.

    Tied parameters are counted once, under the first module that owns them.
    """
    seen: set[int] = set()
    layers = []
    for module_name, module in model.named_modules():
        names, numel, trainable = [], 0, 0
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            names.append(f"{module_name}.{param_name}" if module_name else param_name)
            numel += param.numel()
            trainable += param.numel() if param.requires_grad else 0
        if names:
            name = module_name or ROOT
            layers.append(Layer(name, type(module).__name__, tuple(names), numel, trainable))
    return layers


def _single_parameter(layer: Layer, param: str, model: nn.Module) -> Layer:
    tensor = model.get_parameter(param)
    numel = tensor.numel()
    return Layer(param, layer.type, (param,), numel, numel if tensor.requires_grad else 0)


def select_layers(model: nn.Module, patterns: list[str] | None) -> list[Layer]:
    """The layers named by ``patterns`` (all layers when empty).

    A pattern matches a layer (module) name, a parameter name (a one-parameter block), a
    container module (all layers inside it), or is a glob over those names.

    Raises:
        LayerError: for a pattern that matches nothing, with the closest names.
    """
    layers = list_layers(model)
    if not patterns:
        return layers
    owner = {p: layer for layer in layers for p in layer.parameters}
    chosen: dict[str, Layer] = {}
    for pattern in patterns:
        found = _match(model, layers, owner, pattern)
        if not found:
            names = [layer.name for layer in layers] + list(owner)
            near = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3)
            hint = f"closest names: {', '.join(near)}" if near else f"layers: {_few(layers)}"
            raise LayerError(f"no layer or parameter matches --layer {pattern!r}", hint)
        for layer in found:
            chosen.setdefault(layer.name, layer)
    return list(chosen.values())


def _few(layers: list[Layer]) -> str:
    names = [layer.name for layer in layers]
    return ", ".join(names[:8]) + (f" (+{len(names) - 8} more)" if len(names) > 8 else "")


def _match(model: nn.Module, layers: list[Layer], owner: dict[str, Layer], pattern: str) -> list:
    is_glob = any(ch in pattern for ch in "*?[")
    hits = [
        layer
        for layer in layers
        if fnmatch.fnmatchcase(layer.name, pattern) or layer.name.startswith(pattern + ".")
    ]
    if hits:
        return hits
    hits = [
        _single_parameter(owner[name], name, model)
        for name in owner
        if fnmatch.fnmatchcase(name, pattern)
        if is_glob or name == pattern
    ]
    return hits
