"""Match a checkpoint's keys to a model's state dict, and say in words what does not fit.

Training code saves the same network under many names: wrapped by DataParallel/DDP
(``module.``), ``torch.compile`` (``_orig_mod.``) or a LightningModule (``model.``, ``net.``),
or twice in one file (a distillation ``student.``/``teacher.``). Matching strips or adds wrapper
prefixes until the most keys meet, selects one submodule's keys on request, fills tied weights
from their twin, and reports every missing, unexpected, mis-shaped or ignored key in a
:class:`KeyReport`, with the likeliest fix when the checkpoint does not fit. Kept apart from
reading the file (:mod:`hesscli.loading.checkpoint`) because it needs only tensors and a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hesscli.errors import CheckpointError

#: Key prefixes stripped or added to match the model: DataParallel/DDP (``module.``),
#: ``torch.compile`` (``_orig_mod.``), and the container names as attribute names — a
#: LightningModule holding its network as ``self.model`` or ``self.net`` saves ``net.fc.weight``.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "net.", "network.")
#: How many names a one-line message lists before it says ``(+N more)``.
_LISTED = 8


@dataclass(frozen=True)
class KeyReport:
    """How a checkpoint's keys matched the model's state dict.

    Attributes:
        matched: Number of model keys loaded from the checkpoint.
        missing: Model keys the checkpoint lacks.
        unexpected: Checkpoint keys the model lacks.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys whose shapes differ.
        tied: ``(alias, source)`` for tied model keys filled from their twin.
        prefix: Wrapper prefix removed from (``-module.``) or added to (``+model.``) the keys.
        ignored: Checkpoint tensors deliberately left out, by their names in the file: those
            outside ``checkpoint_prefix``, and under ``strict=False`` those the model has no
            place for (which strict matching reports as ``unexpected`` instead).
    """

    matched: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    tied: tuple[tuple[str, str], ...] = ()
    prefix: str = ""
    ignored: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every model key was filled and every checkpoint key used, shapes equal."""
        return not (self.missing or self.unexpected or self.mismatched)


def _tied_groups(model: nn.Module) -> dict[str, list[str]]:
    """Map each state-dict key to the other keys that share its storage (tied weights)."""
    state = model.state_dict(keep_vars=True)
    by_storage: dict[tuple[int, int, tuple[int, ...]], list[str]] = {}
    for key, value in state.items():
        if value.numel() == 0:
            continue
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        by_storage.setdefault(ident, []).append(key)
    groups: dict[str, list[str]] = {}
    for keys in by_storage.values():
        for key in keys:
            groups[key] = [k for k in keys if k != key]
    return groups


def _rename_keys(keys: tuple[str, ...], change: str) -> tuple[str, ...]:
    """Apply a prefix change: ``-p`` strips ``p`` where present, ``+p`` adds it everywhere."""
    sign, text = change[0], change[1:]
    if sign == "-":
        return tuple(k.removeprefix(text) for k in keys)
    return tuple(text + k for k in keys)


def _align(
    keys: tuple[str, ...], model_keys: set[str], max_changes: int = 3
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Search the prefix changes that make the most of ``keys`` model keys.

    Returns:
        The renamed keys (in the order of ``keys``) and the changes made, shortest first.
    """
    best: tuple[int, tuple[str, ...], tuple[str, ...]] = (
        len(model_keys.intersection(keys)),
        (),
        keys,
    )
    addable = [p for p in WRAPPER_PREFIXES if any(p in k for k in model_keys)]
    frontier: list[tuple[tuple[str, ...], tuple[str, ...]]] = [((), keys)]
    for _ in range(max_changes):
        next_frontier = []
        for changes, current in frontier:
            strippable = [p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in current)]
            for change in [f"-{p}" for p in strippable] + [f"+{p}" for p in addable]:
                renamed = _rename_keys(current, change)
                if len(set(renamed)) != len(renamed):  # two keys would collide
                    continue
                path = (*changes, change)
                score = len(model_keys.intersection(renamed))
                if score > best[0]:
                    best = (score, path, renamed)
                next_frontier.append((path, renamed))
        frontier = next_frontier
    return best[2], best[1]


def align_keys(
    tensors: dict[str, torch.Tensor], model_keys: set[str], max_changes: int = 3
) -> tuple[dict[str, torch.Tensor], str]:
    """Strip or add wrapper prefixes (up to ``max_changes``) to match the most model keys.

    Stacked wrappers such as ``module._orig_mod.`` (DDP around ``torch.compile``) need two
    strips before any key matches, so every sequence of changes is tried, shortest first.

    Returns:
        The renamed tensors and the prefix changes made (e.g. ``"-module."``), ``""`` if none.
    """
    keys = tuple(tensors)
    renamed, changes = _align(keys, model_keys, max_changes)
    return {new: tensors[old] for new, old in zip(renamed, keys, strict=True)}, " ".join(changes)


def _as_prefix(text: str) -> str:
    """``student`` or ``student.`` as the key prefix ``student.``; refuse an empty one."""
    prefix = text.strip().rstrip(".")
    if not prefix:
        raise CheckpointError(
            "--checkpoint-prefix is empty", "name the submodule to load, e.g. 'student'"
        )
    return prefix + "."


def _first_components(keys: list[str]) -> list[str]:
    """The distinct first dotted components of ``keys``, in order of first appearance."""
    return list(dict.fromkeys(k.split(".", 1)[0] for k in keys if "." in k))


def select_prefix(
    tensors: dict[str, torch.Tensor], checkpoint_prefix: str
) -> tuple[dict[str, torch.Tensor], tuple[str, ...], str]:
    """Keep the tensors under ``checkpoint_prefix`` (the prefix removed) and name the others.

    Returns:
        The selected tensors, the keys left out (as in the file), and the change ``-prefix.``.

    Raises:
        CheckpointError: when no key starts with the prefix, listing the prefixes there are.
    """
    prefix = _as_prefix(checkpoint_prefix)
    inside = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    if not inside:
        there = ", ".join(f"{c!r}" for c in _first_components(list(tensors))[:_LISTED])
        raise CheckpointError(
            f"no checkpoint key starts with {prefix!r} (--checkpoint-prefix)",
            f"pass one of the prefixes the checkpoint has: {there}"
            if there
            else "drop --checkpoint-prefix: the checkpoint's keys have no prefix",
        )
    outside = tuple(k for k in tensors if not k.startswith(prefix))
    return inside, outside, f"-{prefix}"


def match_keys(
    tensors: dict[str, torch.Tensor],
    model: nn.Module,
    *,
    strict: bool = True,
    checkpoint_prefix: str | None = None,
) -> tuple[KeyReport, dict]:
    """Compare a state dict with a model's, after aligning wrapper prefixes.

    Args:
        tensors: The checkpoint's state dict.
        model: The model to fill.
        strict: Report checkpoint tensors the model has no place for as ``unexpected`` (an
            error for :func:`load_into`); when false they are ``ignored`` instead.
        checkpoint_prefix: Use only the keys under this prefix (``student`` or ``student.``),
            with the prefix removed; the others are ``ignored``.

    Returns:
        The report, and the aligned state dict restricted to the model's keys.
    """
    model_state = model.state_dict()
    outside: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()
    originals = tuple(tensors)
    if checkpoint_prefix is not None:
        selected, outside, change = select_prefix(tensors, checkpoint_prefix)
        left_out = set(outside)
        originals = tuple(k for k in tensors if k not in left_out)
        changes = (change,)
        tensors = selected
    keys = tuple(tensors)
    renamed, found = _align(keys, set(model_state))
    changes += found
    aligned = {new: tensors[old] for new, old in zip(renamed, keys, strict=True)}
    in_file = dict(zip(renamed, originals, strict=True))  # aligned name -> name in the checkpoint
    tied_twins = _tied_groups(model)
    missing, tied, mismatched = [], [], []
    for key, value in model_state.items():
        if key in aligned:
            got = tuple(aligned[key].shape)
            if got != tuple(value.shape):
                mismatched.append((key, got, tuple(value.shape)))
            continue
        twin = next((t for t in tied_twins.get(key, []) if t in aligned), None)
        if twin is None:
            missing.append(key)
        else:
            tied.append((key, twin))
    extra = tuple(in_file[k] for k in aligned if k not in model_state)
    unexpected, ignored = (extra, outside) if strict else ((), outside + extra)
    matched = len(model_state) - len(missing) - len(mismatched)
    report = KeyReport(
        matched,
        tuple(missing),
        unexpected,
        tuple(mismatched),
        tuple(tied),
        " ".join(changes),
        ignored,
    )
    return report, {k: v for k, v in aligned.items() if k in model_state}


def submodule_prefixes(tensors: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    """First key components under which more of the model's keys are found than at the top.

    A distillation or EMA checkpoint holds the network twice (``student.``/``teacher.``); this
    finds such copies, best match first, to suggest ``--checkpoint-prefix``.
    """
    model_keys = set(model.state_dict())
    at_top = len(model_keys.intersection(_align(tuple(tensors), model_keys)[0]))
    scored = []
    for first in _first_components(list(tensors)):
        prefix = first + "."
        inside = tuple(k.removeprefix(prefix) for k in tensors if k.startswith(prefix))
        score = len(model_keys.intersection(_align(inside, model_keys)[0]))
        if score > at_top:
            scored.append((-score, first))
    return [first for _, first in sorted(scored)]


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def describe_mismatch(report: KeyReport, limit: int = 8) -> str:
    """One line listing missing, unexpected and shape-mismatched keys."""
    parts = []

    def listing(keys: list[str]) -> str:
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    if report.missing:
        parts.append(f"{len(report.missing)} missing: {listing(list(report.missing))}")
    if report.unexpected:
        parts.append(f"{len(report.unexpected)} unexpected: {listing(list(report.unexpected))}")
    if report.mismatched:
        shapes = [f"{k} {_shape(a)} vs model {_shape(b)}" for k, a, b in report.mismatched]
        parts.append(f"{len(shapes)} wrong shape: {listing(shapes)}")
    return "; ".join(parts)


def listing(names: tuple[str, ...] | list[str], limit: int = _LISTED) -> str:
    """``a, b, c (+N more)``: the first ``limit`` names on one line."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def suggest_fix(
    report: KeyReport, tensors: Mapping[str, torch.Tensor], model: nn.Module, *, strict: bool
) -> str:
    """The fix to suggest when a checkpoint does not fit: the likeliest one first."""
    if not (report.missing or report.mismatched):  # extra tensors only: strict refused them
        return (
            "if they are not part of the model (a loss buffer, a teacher, an EMA copy), pass "
            "--no-strict to load the rest and list them as ignored"
        )
    copies = submodule_prefixes(tensors, model) if report.prefix == "" else []
    if len(copies) == 1:
        return f"the model's weights are under {copies[0]!r}: pass --checkpoint-prefix {copies[0]}"
    if copies:
        names = " and ".join(f"{c!r}" for c in copies[:3])
        return (
            f"the checkpoint holds the model under {names}: pass --checkpoint-prefix with the "
            "one to analyse"
        )
    relaxed = "" if strict else "; --no-strict ignores extra tensors, never missing weights"
    return f"check --model and --model-kwargs match the checkpoint's architecture{relaxed}"
