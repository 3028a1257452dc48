"""Loss functions by name, inferred from the targets when not given, and checked against them.

Every loss returns the **mean** over the samples of its batch, so the engine can weight
micro-batches by their size (DESIGN.md: L = (1/N) Σₙ ℓ(f(xₙ), yₙ)). For ``mse``, ``huber`` and
``bce_with_logits`` the per-sample loss is the mean over that sample's output elements.

Each built-in is a :class:`BuiltinLoss`: calling it runs the plain function (same values, same
autograd graph), and it carries its closed-form Hessian with respect to the model outputs
(``output_hessian``, the protocol of :mod:`hesscli.engine.output_curvature`), which spares the
exact layer diagonals differentiating the loss twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hesscli.engine import output_curvature
from hesscli.errors import LossError
from hesscli.loading import sequence_losses
from hesscli.loading.imports import looks_like_spec, parse_spec, resolve_object

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Targets equal to this are padding: ``F.cross_entropy`` and ``F.nll_loss`` ignore them.
IGNORE_INDEX = output_curvature.IGNORE_INDEX
NORMALISATIONS = ("auto", "samples", "tokens")


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Written out rather than F.mse_loss: jvp-of-grad through mse_loss(reduction="mean")
    # fails with "ZeroTensors are immutable" on current torch (pytorch #123996).
    return (outputs - targets).square().mean()


def _huber(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # Written out (δ = 1) rather than F.huber_loss, whose backward has no forward-mode rule,
    # so that the forward-over-reverse route is available.
    error = (outputs - targets).abs()
    return torch.where(error < 1.0, 0.5 * error.square(), error - 0.5).mean()


def _bce_with_logits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))


@dataclass(frozen=True)
class BuiltinLoss:
    """A built-in loss with its closed-form Hessian with respect to the model outputs.

    Attributes:
        function: ``function(outputs, targets)`` → mean loss over the batch; calling the
            object calls it and nothing else.
        output_hessian: ``output_hessian(outputs, targets)`` → the ``(b, m, m)`` per-sample
            Hessians of that mean with respect to the outputs (``None`` for shapes it does not
            cover); see :mod:`hesscli.engine.output_curvature`.
    """

    function: LossFn
    output_hessian: output_curvature.OutputHessian

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of the batch."""
        return self.function(outputs, targets)


BUILTIN_LOSSES: dict[str, LossFn] = {
    "cross_entropy": BuiltinLoss(F.cross_entropy, output_curvature.cross_entropy_hessian),
    "mse": BuiltinLoss(_mse, output_curvature.mse_hessian),
    "nll": BuiltinLoss(F.nll_loss, output_curvature.nll_hessian),
    "bce_with_logits": BuiltinLoss(_bce_with_logits, output_curvature.bce_with_logits_hessian),
    "huber": BuiltinLoss(_huber, output_curvature.huber_hessian),
    "token_cross_entropy": BuiltinLoss(
        sequence_losses.token_cross_entropy, sequence_losses.token_cross_entropy_hessian
    ),
    "next_token_cross_entropy": BuiltinLoss(
        sequence_losses.next_token_cross_entropy,
        sequence_losses.next_token_cross_entropy_hessian,
    ),
}
#: Built-ins over logits ``(b, T, C)`` (class last) and labels ``(b, T)``: token means.
TOKEN_LOSSES = ("token_cross_entropy", "next_token_cross_entropy")
#: Leading target positions per sequence that no term of a built-in uses (see ``Loss.shift``).
SHIFTS = {"next_token_cross_entropy": 1}
_ALIASES = {
    "ce": "cross_entropy",
    "crossentropy": "cross_entropy",
    "bce": "bce_with_logits",
    "causal_lm": "next_token_cross_entropy",
}


@dataclass(frozen=True)
class Loss:
    """A resolved loss.

    Attributes:
        name: Built-in name or the ``module:function`` spec.
        fn: ``fn(outputs, targets)`` → mean loss over the batch.
        how: Why this loss: ``"option"``/config source, or ``"inferred from ... targets"``.
        shift: Leading target positions per sequence that no loss term uses (1 for a causal
            LM's next-token cross-entropy, whose logits at ``t`` predict the label at ``t + 1``),
            so that token weighting counts ``targets[:, shift:] != -100``: the tokens the loss
            really averages over.
    """

    name: str
    fn: LossFn
    how: str
    shift: int = 0

    @property
    def inferred(self) -> bool:
        """Whether the loss was inferred from the targets rather than named."""
        return self.how.startswith("inferred")


def builtin_loss(name: str, how: str) -> Loss:
    """The built-in loss ``name`` (a key of :data:`BUILTIN_LOSSES`), with its target shift."""
    return Loss(name, BUILTIN_LOSSES[name], how, SHIFTS.get(name, 0))


def infer_loss_name(targets: torch.Tensor) -> tuple[str, str]:
    """The loss implied by the targets' dtype, with the reason.

    Integer class labels → ``cross_entropy``; booleans → ``bce_with_logits``; floats → ``mse``.
    """
    if targets.dtype == torch.bool:
        return "bce_with_logits", "inferred from boolean targets"
    if targets.is_floating_point():
        return "mse", f"inferred from floating-point targets ({_dtype(targets)})"
    return "cross_entropy", f"inferred from integer class-label targets ({_dtype(targets)})"


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def resolve_loss(name: str | None, targets: torch.Tensor, *, base: Path, how: str) -> Loss:
    """Resolve ``--loss`` (a built-in name or ``module:function``), or infer it.

    Args:
        name: The loss as given, or ``None`` to infer it from ``targets``.
        targets: The first batch's targets.
        base: Directory that a ``file.py:function`` spec resolves against.
        how: Where ``name`` came from, for the report.
    """
    if name is None:
        inferred, reason = infer_loss_name(targets)
        return Loss(inferred, BUILTIN_LOSSES[inferred], reason)
    key = _ALIASES.get(name.lower(), name.lower())
    if key in BUILTIN_LOSSES:
        return builtin_loss(key, how)
    if not looks_like_spec(name):
        raise LossError(
            f"unknown loss {name!r}",
            f"use one of {', '.join(BUILTIN_LOSSES)} or a module:function spec",
        )
    spec = parse_spec(name, base=base, what="loss", error=LossError)
    fn = resolve_object(spec, base=base, what="loss", error=LossError)
    if not callable(fn):
        raise LossError(
            f"loss {name!r} is a {type(fn).__name__}, not a function",
            "point --loss at a function (outputs, targets) -> mean loss",
        )
    return Loss(name, fn, how)


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_fit(loss: Loss, outputs: object, targets: torch.Tensor) -> None:
    """Check that ``outputs`` and ``targets`` fit ``loss`` before any curvature is computed.

    Raises:
        LossError: naming the shapes or values that do not fit, and the fix.
    """
    if loss.name not in BUILTIN_LOSSES:  # a module:function loss takes what the model returns
        _check_custom(loss, outputs, targets)
        return
    if not isinstance(outputs, torch.Tensor):
        raise LossError(
            f"the model returns a {type(outputs).__name__}, not a tensor of outputs",
            "pass --output-key with the output the loss takes (e.g. logits)",
        )
    name = loss.name
    out, tgt = _shape(outputs), _shape(targets)
    if name in {"cross_entropy", "nll"}:
        _check_classification(name, outputs, targets)
    elif name in TOKEN_LOSSES:
        _check_tokens(name, outputs, targets)
    elif name in {"mse", "huber", "bce_with_logits"}:
        if not (targets.is_floating_point() or name == "bce_with_logits"):
            raise LossError(
                f"loss {name} needs floating-point targets, got {_dtype(targets)} {tgt}",
                "use --loss cross_entropy for class labels, or store float targets",
            )
        if out != tgt:
            raise LossError(
                f"loss {name}: model outputs have shape {out} but targets have shape {tgt}",
                "store targets with the outputs' shape (no silent broadcasting), or fix --model",
            )
        if name == "bce_with_logits" and ((targets < 0).any() or (targets > 1).any()):
            raise LossError(
                f"loss {name}: targets must lie in [0, 1], found values in "
                f"[{float(targets.min()):g}, {float(targets.max()):g}]",
                "store probabilities or 0/1 labels as targets",
            )


def _check_classification(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    out, tgt = _shape(outputs), _shape(targets)
    if targets.is_floating_point():
        if name == "nll" or out != tgt:
            raise LossError(
                f"loss {name}: float targets {tgt} need outputs of the same shape, got {out}",
                "store integer class labels (int64) as targets, or use --loss mse",
            )
        return
    if targets.dtype == torch.bool or targets.is_complex():
        raise LossError(
            f"loss {name} needs integer class labels, got {_dtype(targets)} targets",
            "store the labels as int64, or use --loss bce_with_logits",
        )
    if outputs.ndim != targets.ndim + 1 or out[:1] + out[2:] != tgt:
        raise LossError(
            f"loss {name}: outputs of shape {out} do not fit class-label targets of shape {tgt}",
            "outputs must be (N, C, ...) for targets (N, ...); check --model and --data",
        )
    _check_label_range(name, targets, out[1])


def _check_tokens(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> None:
    out, tgt = _shape(outputs), _shape(targets)
    if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
        raise LossError(
            f"loss {name} needs integer token labels, got {_dtype(targets)} targets {tgt}",
            "store the labels as int64 (-100 where no token is to be predicted)",
        )
    if outputs.ndim != 3 or out[:2] != tgt:
        raise LossError(
            f"loss {name}: outputs of shape {out} do not fit token labels of shape {tgt}",
            "outputs must be logits (N, T, C) for labels (N, T); check --model and --data",
        )
    _check_label_range(name, targets[:, SHIFTS.get(name, 0) :], out[2])


def _check_label_range(name: str, targets: torch.Tensor, classes: int) -> None:
    labels = targets[targets != IGNORE_INDEX]  # padding, which the loss ignores
    if labels.numel() == 0:  # these samples are all padding; data with none is refused later
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise LossError(
            f"loss {name}: targets hold class labels in [{low}, {high}] but the model outputs "
            f"{classes} classes",
            "labels must lie in [0, C); check the data and the model's output size",
        )


def _check_custom(loss: Loss, outputs: object, targets: torch.Tensor) -> None:
    try:
        value = loss.fn(outputs, targets)
    except Exception as exc:
        described = (
            str(_shape(outputs)) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        )
        raise LossError(
            f"loss {loss.name} failed on outputs {described} and targets "
            f"{_shape(targets)}: {type(exc).__name__}: {exc}",
            "make the loss accept (outputs, targets) and return the batch mean",
        ) from exc
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = _shape(value) if isinstance(value, torch.Tensor) else type(value).__name__
        raise LossError(
            f"loss {loss.name} returned {shape}, not a scalar",
            "return the mean loss over the batch as a 0-d tensor",
        )


def resolve_normalisation(requested: str, loss: Loss, targets: torch.Tensor) -> tuple[str, str]:
    """What the loss averages over: ``samples``, or ``tokens`` (targets other than -100).

    ``auto`` picks tokens for integer targets with padding (-100), and for the built-in
    cross-entropy and NLL with one label per position (``(N, T)`` targets), whose mean is over
    positions: both average over tokens, so micro-batches must be weighted by their tokens.

    Returns:
        The kind and why it was chosen.
    """
    key = str(requested).strip().lower()
    if key not in NORMALISATIONS:
        raise LossError(
            f"unknown --normalisation {requested!r}", f"use {', '.join(NORMALISATIONS)}"
        )
    labels = not (
        targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool
    )
    if key == "tokens" and not labels:
        raise LossError(
            f"--normalisation tokens counts integer targets other than {IGNORE_INDEX}, but the "
            f"targets are {_dtype(targets)}",
            "use --normalisation samples (or auto)",
        )
    if key != "auto":
        return key, "as requested"
    padded = labels and bool((targets == IGNORE_INDEX).any())
    per_position = {"cross_entropy", "nll", *TOKEN_LOSSES}
    positions = labels and loss.name in per_position and targets.ndim > 1
    if padded or positions:
        why = f"targets hold padding ({IGNORE_INDEX})" if padded else "one label per position"
        return "tokens", f"auto: {why}"
    return "samples", "auto"


def check_class_range(loss: Loss, targets: torch.Tensor, output_shape: tuple[int, ...]) -> None:
    """Check every batch's labels (not only the first one's) against the number of classes.

    The classes are the outputs' dimension 1, or the last one for the token losses.
    """
    if loss.name in TOKEN_LOSSES and targets.ndim == 2 and len(output_shape) == 3:
        _check_label_range(loss.name, targets[:, loss.shift :], output_shape[-1])
    elif loss.name in {"cross_entropy", "nll"} and not targets.is_floating_point():
        _check_label_range(loss.name, targets, output_shape[1])
