"""Which model output the loss sees, when ``forward()`` returns more than one tensor.

Hugging Face models return a ``ModelOutput`` (a dict with attribute access), other models a
dict or a tuple. The built-in losses take one tensor: ``logits`` by default (a tuple's first
element), or the one ``--output-key`` names. A ``module:function`` loss gets the whole output
unless ``--output-key`` is given, so a loss that reads ``outputs.logits`` works as written.

The selection is made part of the model: its ``forward`` is replaced, on this instance only, by
one that returns the selected tensor. Everything downstream (the engine's products, the exact
layer diagonals, the output-space curvature of the GGN) then sees a model that returns a tensor,
and the module names and parameters stay the model's own: no wrapper adds a prefix.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hesscli.errors import LossError

#: The output the built-in losses see by default.
DEFAULT_KEY = "logits"


@dataclass(frozen=True)
class Selection:
    """One tensor of a model's outputs.

    Attributes:
        key: A mapping key, or a tuple index.
        squeeze_last: Drop a trailing dimension of size 1 (a regression head's ``(N, 1)``
            logits, compared with ``(N,)`` labels, as Hugging Face's own loss does).
    """

    key: str | int
    squeeze_last: bool = False

    def describe(self) -> str:
        """``logits``, ``[0]`` or ``logits[..., 0]``."""
        text = f"[{self.key}]" if isinstance(self.key, int) else self.key
        return f"{text}[..., 0]" if self.squeeze_last else text

    def pick(self, outputs: Any) -> Any:
        """The selected tensor of ``outputs``."""
        value = outputs[self.key]
        return value[..., 0] if self.squeeze_last else value


class _SelectingForward:
    """``forward`` of one model instance: the class's own, then :meth:`Selection.pick`.

    A callable object bound with :class:`types.MethodType` (not a closure over the bound
    original), so that a copy of the model calls its own weights.
    """

    def __init__(self, selection: Selection) -> None:
        self.selection = selection

    def __call__(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.selection.pick(type(module).forward(module, *args, **kwargs))


def _available(outputs: Any) -> str:
    if isinstance(outputs, Mapping):
        return "keys: " + (", ".join(map(str, outputs)) or "none")
    return f"a tuple of {len(outputs)}"


def choose(outputs: Any, key: str | None, *, whole_by_default: bool) -> Selection | None:
    """The selection for these (probe) outputs, or ``None`` to give the loss them as they are.

    Args:
        outputs: What the model returned on the probe samples.
        key: ``--output-key``, or ``None``.
        whole_by_default: Without ``key``, a ``module:function`` loss gets the whole output.

    Raises:
        LossError: the key is not there (listing those that are), or the output is of a kind
            that cannot be selected from.
    """
    if isinstance(outputs, torch.Tensor):
        if key is not None:
            raise LossError(
                f"--output-key {key} names an output, but the model returns one tensor",
                "drop --output-key",
            )
        return None
    if key is None and whole_by_default:
        return None
    if isinstance(outputs, Mapping):
        wanted = DEFAULT_KEY if key is None else key
        if wanted in outputs and isinstance(outputs[wanted], torch.Tensor):
            return Selection(wanted)
        fix = "pass --output-key with one of them" if key is None else "pick one of those"
        raise LossError(
            f"the model's outputs have no tensor {wanted!r} for the loss ({_available(outputs)})",
            fix,
        )
    if isinstance(outputs, tuple | list) and outputs:
        index = 0 if key is None else _index(key, len(outputs))
        if isinstance(outputs[index], torch.Tensor):
            return Selection(index)
        raise LossError(
            f"element {index} of the model's outputs is a {type(outputs[index]).__name__}, "
            "not a tensor",
            "pass --output-key with the index of the tensor the loss takes",
        )
    raise LossError(
        f"the model returns a {type(outputs).__name__}, not a tensor of outputs",
        "make forward() return a tensor, a dict or a tuple of tensors (e.g. the logits)",
    )


def _index(key: str, length: int) -> int:
    try:
        index = int(key)
    except ValueError:
        index = length
    if not 0 <= index < length:
        raise LossError(
            f"--output-key {key} does not index the model's {length} outputs (a tuple)",
            f"pass an index from 0 to {length - 1}",
        )
    return index


def install(model: nn.Module, selection: Selection) -> None:
    """Make ``model`` return the selected tensor (this instance only)."""
    model.forward = types.MethodType(_SelectingForward(selection), model)  # type: ignore[method-assign]
