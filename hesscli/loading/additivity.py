"""Is a custom loss the mean over the units hesscli weights micro-batches by? Checked, not assumed.

The engine splits the data into micro-batches (and ranks) and adds their mean losses with
weights uⱼ/U (:mod:`hesscli.engine.weighting`). That is exact only when the loss over a set of
samples *is* the mean over its units: then for any split into parts A and B,

    L(A ∪ B) = (u_A · L(A) + u_B · L(B)) / (u_A + u_B).

hesscli knows the built-in losses; a ``module:function`` loss could divide by anything (the
batch size, its own count of shifted tokens, a constant) or sum. So, once per run, the first
samples go through the model, and the loss of the whole probe is compared with the weighted
loss of two uneven parts of the *same* outputs, in float64, also after perturbing one part's
outputs (two parts with nearly equal losses would hide wrong weights). A loss that fails is
refused with one line — or, when all data is one micro-batch on one process, where no
weighting happens, accepted with a warning. Token losses that pass only when each sequence's
first target is left out (a next-token loss that shifts its labels itself, as Hugging Face's
does) are weighted that way, and the reason says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hesscli.batches import Batch, apply_model
from hesscli.engine.weighting import SAMPLES, TOKENS, count_units
from hesscli.errors import LossError
from hesscli.loading.losses import BUILTIN_LOSSES, Loss

#: Samples of the first batch the check runs on (those the loading probe already ran).
PROBE_SAMPLES = 8
#: Output elements the check copies to float64 at most (about 128 MiB), unless 2 samples exceed it.
MAX_ELEMENTS = 2**24
log = logging.getLogger("hesscli")


@dataclass(frozen=True)
class Additivity:
    """The outcome of :func:`check_additive`.

    Attributes:
        additive: Whether the loss is the mean over its units (micro-batches may split it).
        shift: Leading target positions per sequence the loss leaves out (may be found here).
        kind: ``samples`` or ``tokens``: the unit it is a mean over (may be found here).
        note: What was found, for the normalisation reason (empty when nothing to say).
    """

    additive: bool
    shift: int
    kind: str
    note: str = ""


class _Unsliceable(Exception):
    """The model's outputs hold something that is not split along samples."""


def _map(outputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor of a tensor, dict/``ModelOutput`` or tuple/list."""
    if isinstance(outputs, torch.Tensor):
        return fn(outputs)
    if isinstance(outputs, Mapping):
        return type(outputs)(**{key: _map(value, fn) for key, value in outputs.items()})
    if isinstance(outputs, tuple | list):
        return type(outputs)(_map(value, fn) for value in outputs)
    return outputs


def _rows(outputs: Any, samples: int, start: int, stop: int) -> Any:
    def cut(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim == 0 or tensor.shape[0] != samples:
            raise _Unsliceable
        return tensor[start:stop]

    return _map(outputs, cut)


def _float64(outputs: Any) -> Any:
    return _map(outputs, lambda t: t.double() if t.is_floating_point() else t)


def _perturbed(outputs: Any, stop: int, generator: torch.Generator) -> Any:
    """The outputs with seeded noise of their own scale added to the first ``stop`` rows."""

    def shake(tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            return tensor
        noise = torch.randn(tensor[:stop].shape, generator=generator, dtype=tensor.dtype)
        scale = 1.0 + float(tensor.std()) if tensor.numel() > 1 else 1.0
        return torch.cat([tensor[:stop] + scale * noise, tensor[stop:]])

    return _map(outputs, shake)


def _split(targets: torch.Tensor, kind: str, shift: int) -> int | None:
    """Where to cut the probe: uneven parts (about a third), each holding units."""
    n = int(targets.shape[0])
    for cut in dict.fromkeys((n // 3, n // 2, 1, n - 1)):
        if 1 <= cut < n and all(
            count_units(part, kind, shift) > 0 for part in (targets[:cut], targets[cut:])
        ):
            return cut
    return None


def _gap(
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    outputs: Any,
    targets: torch.Tensor,
    *,
    kind: str,
    shift: int,
    cut: int,
) -> tuple[float, float, float]:
    """(relative gap, whole loss, weighted parts) of ``loss_fn`` on one split."""
    n = int(targets.shape[0])
    whole = float(loss_fn(outputs, targets))
    parts = [(0, cut), (cut, n)]
    weights = [count_units(targets[a:b], kind, shift) for a, b in parts]
    values = [float(loss_fn(_rows(outputs, n, a, b), targets[a:b])) for a, b in parts]
    combined = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    scale = max(abs(whole), *(abs(v) for v in values), 1e-300)
    return abs(whole - combined) / scale, whole, combined


def _additive(loss: Loss, outputs: Any, targets: torch.Tensor, kind: str, shift: int) -> tuple:
    """``(passes, whole, combined, cut)`` for one candidate shift, or ``None`` if untestable."""
    cut = _split(targets, kind, shift)
    if cut is None:
        return None
    tolerance = torch.finfo(torch.float64).eps ** 0.5
    worst = (0.0, 0.0, 0.0)
    variants = [outputs, _perturbed(outputs, cut, torch.Generator().manual_seed(0))]
    for variant in variants:
        try:
            found = _gap(loss.fn, variant, targets, kind=kind, shift=shift, cut=cut)
        except _Unsliceable:
            return None
        except Exception as exc:
            raise LossError(
                f"loss {loss.name} failed on part of the first batch: the loss raised "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}",
                "make the loss accept any number of samples and return their mean",
            ) from exc
        if found[0] == found[0] and found[0] > worst[0]:  # NaN (perturbed log of <0) skipped
            worst = found
    return worst[0] <= tolerance, worst[1], worst[2], cut


def check_additive(
    model: nn.Module, batch: Batch, loss: Loss, *, kind: str, auto: bool, one_pass: bool
) -> Additivity:
    """Check that a custom loss is the mean over ``kind`` (module doc); built-ins pass.

    Candidates, first passing one kept: ``kind`` with the loss's shift; for tokens, past each
    sequence's first position (a next-token loss shifting its labels itself); and when
    ``--normalisation`` is ``auto`` and guessed tokens, samples (a mean over sequences).

    Args:
        model: The model, in eval mode, returning what the loss takes.
        batch: The first batch (its first :data:`PROBE_SAMPLES` samples are used).
        loss: The resolved loss.
        kind: ``samples`` or ``tokens``, as resolved for ``--normalisation``.
        auto: Whether ``kind`` was guessed (``--normalisation auto``) rather than asked for.
        one_pass: Whether all data is one micro-batch on one process (no weighting at all).

    Raises:
        LossError: one line, when the loss is not additive and the data is split.
    """
    if loss.name in BUILTIN_LOSSES:
        return Additivity(True, loss.shift, kind)
    probe = batch.slice(0, min(PROBE_SAMPLES, batch.size))
    if probe.size < 2:
        return Additivity(True, loss.shift, kind)
    with torch.no_grad():
        outputs = apply_model(model, probe.inputs)
    elements: list[int] = []
    _map(outputs, lambda t: elements.append(t.numel()) or t)
    keep = max(2, probe.size * MAX_ELEMENTS // max(sum(elements), 1))
    if keep < probe.size:  # a large vocabulary: fewer samples, so float64 copies stay small
        try:
            outputs, probe = _rows(outputs, probe.size, 0, keep), probe.slice(0, keep)
        except _Unsliceable:
            return Additivity(True, loss.shift, kind)  # untested, as below
    outputs, targets = _float64(outputs), probe.targets
    candidates = [(kind, loss.shift)]
    if kind == TOKENS and loss.shift == 0 and targets.ndim >= 2:
        candidates.append((TOKENS, 1))  # a next-token loss that shifts its labels itself
    if kind == TOKENS and auto:
        candidates.append((SAMPLES, 0))  # a mean over sequences of its own choosing
    first = None
    for unit, shift in candidates:
        found = _additive(loss, outputs, targets, unit, shift)
        if found is None:
            return Additivity(True, loss.shift, kind)  # nothing to split: untested
        first = first or found
        if found[0]:
            return Additivity(True, shift, unit, _note(loss, unit, shift, kind))
    _, whole, combined, cut = first
    problem = (
        f"loss {loss.name} is not a mean over {kind}: on the first {probe.size} samples it gives "
        f"{whole:.10g}, its parts of {cut} and {probe.size - cut} samples weighted by their "
        f"{kind} give {combined:.10g}"
    )
    if one_pass:
        log.warning(
            "%s; all samples are one micro-batch on one process, so the result is that loss "
            "on them, but it would change with --micro-batch or more processes",
            problem,
        )
        return Additivity(False, loss.shift, kind, "not a mean over them: one pass only")
    other = "tokens" if kind != TOKENS else "samples"
    raise LossError(
        f"{problem}, so the results would change with --micro-batch and the processes",
        f"return the mean over the batch's {kind} (or pass --normalisation {other} if it is "
        f"the mean over {other}), or put all samples in one micro-batch",
    )


def _note(loss: Loss, unit: str, shift: int, kind: str) -> str:
    """What the check found beyond the resolved normalisation (empty when nothing)."""
    if unit != kind:
        note = f"the loss is a mean over {unit} (checked on the first batch)"
    elif shift != loss.shift:
        note = f"the loss leaves out the first {shift} target of each sequence (checked)"
    else:
        return ""
    log.info("loss %s: %s", loss.name, note)
    return note
