"""Read checkpoints, match them to a model, and write self-describing ``.safetensors`` files.

Reads ``.safetensors`` and ``.pt``/``.pth``/``.bin``/``.ckpt`` files.
A checkpoint's format is sniffed from its first bytes rather than trusted from its extension.
PyTorch files are read with ``weights_only=True``, which also lets numpy scalars and dtypes
through (training loops save metrics such as ``best_acc: np.float64``); a full pickled
``nn.Module`` is only unpickled when the caller passes ``trust_pickle=True``, because unpickling
runs arbitrary code.

Real training checkpoints hold more than the model: an epoch counter, optimizer states, a loss
buffer, a teacher network. Matching is strict by default (every checkpoint tensor must have a
place in the model); ``strict=False`` ignores the tensors the model has no place for, and
``checkpoint_prefix`` selects the keys of one submodule (``student.``). Whatever is not loaded
is listed — in :class:`RawCheckpoint.ignored` (entries beside the state dict) and
:class:`KeyReport.ignored` (tensors left out) — and logged, never dropped silently. Missing or
mis-shaped weights are refused in every mode: they would leave the model partly at its random
initialisation, and every curvature number would be wrong without a sign of it.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model
from torch import nn

from hesscli.errors import CheckpointError, NumericalError

#: Entries under which training loops and Lightning nest the model's state dict, most likely first.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
#: Key prefixes stripped or added to match the model: DataParallel/DDP (``module.``),
#: ``torch.compile`` (``_orig_mod.``), and the container names as attribute names — a
#: LightningModule holding its network as ``self.model`` or ``self.net`` saves ``net.fc.weight``.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "net.", "network.")
#: Key of the hesscli defaults inside a ``.safetensors`` header's metadata.
METADATA_KEY = "hesscli"

_SUFFIXES = ".safetensors, .pt, .pth, .bin, .ckpt"
#: How many names a one-line message lists before it says ``(+N more)``.
_LISTED = 8

log = logging.getLogger("hesscli")


@dataclass(frozen=True)
class RawCheckpoint:
    """What a checkpoint file holds, before it is matched to a model.

    Attributes:
        path: The file.
        format: ``"safetensors"``, ``"torch-zip"`` or ``"torch-legacy"``.
        size_bytes: File size.
        tensors: The (unwrapped) state dict; empty when the file holds a pickled module only.
        container: The nested entry the state dict came from (``"state_dict"``...), if any.
        ignored: Entries that are not part of the state dict and were skipped: the containers'
            siblings (``epoch``, ``optimizer_states``...) and non-tensor values beside the
            tensors, as dotted paths (``state_dict.best_acc``).
        module: The pickled ``nn.Module`` when the file holds one (only with ``trust_pickle``).
        metadata: hesscli defaults stored in a ``.safetensors`` header, else empty.
    """

    path: Path
    format: str
    size_bytes: int
    tensors: dict[str, torch.Tensor]
    container: str | None = None
    ignored: tuple[str, ...] = ()
    module: nn.Module | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


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


def check_readable_file(path: Path, *, what: str, error: type[CheckpointError]) -> None:
    """Raise ``error`` unless ``path`` is an existing, non-empty, readable regular file."""
    if not path.exists():
        raise error(f"{what} not found: {path}", "check the path")
    if path.is_dir():
        inside = sorted(
            p.name for p in path.iterdir() if p.suffix in {".safetensors", ".pt", ".pth", ".bin"}
        )
        hint = f"pass a file inside it, e.g. {path / inside[0]}" if inside else "pass a file"
        raise error(f"{what} {path} is a directory, not a file", hint)
    try:
        with path.open("rb") as handle:
            first = handle.read(1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}", "check its permissions") from exc
    if not first:
        raise error(f"{what} {path} is empty (0 bytes)", "re-export it; the file was not written")


def sniff_format(path: Path) -> str:
    """Tell a file's checkpoint format from its first bytes.

    Returns:
        ``"safetensors"``, ``"torch-zip"``, ``"torch-legacy"`` or ``"unknown"``.
    """
    with path.open("rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "torch-zip"
    # safetensors before the pickle test: its first byte is the low byte of the header
    # length, which may well be 0x80 (legacy torch files carry a magic number at byte 8).
    if len(head) == 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < path.stat().st_size:
            return "safetensors"
    if head[:1] == b"\x80":
        return "torch-legacy"
    return "unknown"


def _is_tensor_map(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str | None, tuple[str, ...]]:
    """Find the model's state dict inside a loaded checkpoint object.

    Looks at the object itself, then (recursively) under :data:`CONTAINER_KEYS`. Everything
    else the object holds — an epoch, optimizer states, metrics, a second state dict — is named
    in the skipped entries, so that a caller can say what it left out.

    Returns:
        The tensors, the dotted container path used (or ``None``), and the skipped entries as
        dotted paths (``epoch``, ``state_dict.best_acc``).
    """
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                found = _try_unwrap(inner)
                if found is not None:
                    tensors, container, ignored = found
                    path = key if container is None else f"{key}.{container}"
                    siblings = tuple(str(k) for k in obj if k != key)
                    return tensors, path, siblings + tuple(f"{key}.{name}" for name in ignored)
        if _is_tensor_map(obj):
            tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            ignored = tuple(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
            return tensors, None, ignored
        keys = ", ".join(map(str, list(obj)[:12])) or "none"
        raise CheckpointError(
            f"no state dict found in the checkpoint (top-level keys: {keys})",
            "save model.state_dict(), or nest it under 'state_dict' or 'model_state_dict'",
        )
    raise CheckpointError(
        f"the checkpoint holds a {type(obj).__name__}, not a state dict",
        "save model.state_dict() with torch.save or safetensors",
    )


def _try_unwrap(obj: Mapping) -> tuple[dict[str, torch.Tensor], str | None, tuple[str, ...]] | None:
    try:
        return unwrap_state_dict(obj)
    except CheckpointError:
        return None


def _unsupported_global(message: str) -> str | None:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def numpy_safe_globals() -> list[Any]:
    """The numpy globals a weights-only load may meet in a plain metric: scalars and dtypes.

    ``torch.save({"best_acc": np.float64(0.93)})`` pickles ``numpy...multiarray.scalar`` and
    ``numpy.dtype``. Both only rebuild a number from its dtype and raw bytes; an object inside
    (an ``object`` dtype scalar) is itself unpickled by the same weights-only unpickler, so
    arbitrary classes stay refused. The scalar is listed under its numpy 1 and numpy 2 module
    names, so a file written with either loads with either. Arrays are not included.

    Returns:
        Entries for ``torch.serialization.safe_globals`` (empty when numpy is absent).
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    try:
        from numpy._core.multiarray import scalar  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    entries: list[Any] = [
        np.dtype,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
    ]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        entries += [
            getattr(dtypes, name)
            for name in sorted(dir(dtypes))
            if name.endswith("DType") and isinstance(getattr(dtypes, name), type)
        ]
    return entries


def _torch_load(path: Path, *, trust_pickle: bool) -> Any:
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
        if safe is None:  # pragma: no cover - older torch: numpy scalars need --trust-pickle
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe(numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        culprit = _unsupported_global(str(exc))
        if culprit is not None:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects ({culprit}) that a safe "
                "weights-only load refuses",
                "re-save it with torch.save(model.state_dict(), path), or pass --trust-pickle "
                "if you trust the file (unpickling runs arbitrary code)",
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch file ({_first_line(exc)})",
            "the file is corrupt or not a checkpoint; re-export it",
        ) from exc
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({_first_line(exc)})",
            "re-export or re-download it",
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_metadata(path: Path) -> dict[str, Any]:
    """The hesscli defaults stored in a ``.safetensors`` header (empty when there are none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} has an unreadable safetensors header ({_first_line(exc)})",
            "the file is truncated or corrupt; re-export it",
        ) from exc
    text = raw.get(METADATA_KEY)
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"checkpoint {path} has hesscli metadata that is not valid JSON",
            "rewrite it with 'hesscli convert', or write a new file without it",
        ) from exc
    if not isinstance(value, dict):
        raise CheckpointError(
            f"checkpoint {path} has hesscli metadata that is not a JSON object",
            "rewrite it with 'hesscli convert'",
        )
    return value


def read_checkpoint(path: Path, *, trust_pickle: bool = False) -> RawCheckpoint:
    """Read a checkpoint file without touching any model.

    Args:
        path: The checkpoint.
        trust_pickle: Allow unpickling arbitrary objects (a full pickled ``nn.Module``).

    Returns:
        The checkpoint's tensors (unwrapped from training-loop containers) and metadata.
    """
    check_readable_file(path, what="checkpoint", error=CheckpointError)
    kind = sniff_format(path)
    size = path.stat().st_size
    if kind == "safetensors":
        metadata = read_metadata(path)
        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt ({_first_line(exc)})",
                "re-export or re-download it",
            ) from exc
        return RawCheckpoint(path, kind, size, dict(tensors), metadata=metadata)
    if kind == "unknown":
        if path.suffix == ".safetensors":
            raise CheckpointError(
                f"checkpoint {path} is not a valid safetensors file (bad or truncated header)",
                "re-export or re-download it",
            )
        raise CheckpointError(
            f"{path} is not a checkpoint format hesscli reads",
            f"pass a {_SUFFIXES} file written by safetensors or torch.save",
        )
    obj = _torch_load(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        return RawCheckpoint(path, kind, size, {}, module=obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), nn.Module):
                return RawCheckpoint(path, kind, size, {}, container=key, module=obj[key])
    tensors, container, ignored = unwrap_state_dict(obj)
    return RawCheckpoint(path, kind, size, tensors, container=container, ignored=ignored)


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


def check_finite_state(tensors: Mapping[str, torch.Tensor], *, where: str) -> None:
    """Raise :class:`NumericalError` naming every floating tensor that holds NaN or Inf."""
    bad = []
    for key, value in tensors.items():
        if not value.is_floating_point():
            continue
        nan = int(torch.isnan(value).sum())
        inf = int(torch.isinf(value).sum())
        if nan or inf:
            counts = " and ".join(f"{n} {w}" for n, w in ((nan, "NaN"), (inf, "Inf")) if n)
            bad.append(f"{key} ({counts})")
    if bad:
        listing = ", ".join(bad[:6]) + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else "")
        raise NumericalError(
            f"{where} contain non-finite values: {listing}",
            "the checkpoint comes from a diverged run; use an earlier checkpoint",
        )


def listing(names: tuple[str, ...] | list[str], limit: int = _LISTED) -> str:
    """``a, b, c (+N more)``: the first ``limit`` names on one line."""
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _fit_hint(report: KeyReport, raw: RawCheckpoint, model: nn.Module, *, strict: bool) -> str:
    """The fix to suggest when a checkpoint does not fit: the likeliest one first."""
    if not (report.missing or report.mismatched):  # extra tensors only: strict refused them
        return (
            "if they are not part of the model (a loss buffer, a teacher, an EMA copy), pass "
            "--no-strict to load the rest and list them as ignored"
        )
    copies = submodule_prefixes(raw.tensors, model) if report.prefix == "" else []
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


def load_into(
    model: nn.Module,
    raw: RawCheckpoint,
    *,
    strict: bool = True,
    checkpoint_prefix: str | None = None,
) -> KeyReport:
    """Load ``raw``'s tensors into ``model`` after checking every key and shape.

    What was not loaded — entries beside the state dict, and tensors left out by
    ``checkpoint_prefix`` or ``strict=False`` — is logged as one ``hesscli`` line and returned
    in :attr:`KeyReport.ignored` (with :attr:`RawCheckpoint.ignored`), so nothing is dropped
    silently.

    Args:
        model: The model to fill.
        raw: The checkpoint.
        strict: Refuse checkpoint tensors the model has no place for.
        checkpoint_prefix: Load only the keys under this prefix (see :func:`match_keys`).

    Raises:
        CheckpointError: listing all missing, unexpected and mis-shaped keys, with the likeliest
            fix (``--no-strict``, ``--checkpoint-prefix``, or the model's options).
        NumericalError: naming the weights that hold NaN or Inf.
    """
    report, state = match_keys(
        raw.tensors, model, strict=strict, checkpoint_prefix=checkpoint_prefix
    )
    if not report.ok:
        raise CheckpointError(
            f"checkpoint {raw.path} does not fit the model: {describe_mismatch(report)}",
            _fit_hint(report, raw, model, strict=strict),
        )
    check_finite_state(state, where=f"checkpoint {raw.path.name} weights")
    model.load_state_dict(state, strict=False)
    skipped = (*raw.ignored, *report.ignored)
    if skipped:
        log.info(
            "checkpoint %s: loaded %d tensors%s%s; ignored %d entries: %s",
            raw.path.name,
            len(state),
            f" from {raw.container!r}" if raw.container else "",
            f" (prefix {report.prefix})" if report.prefix else "",
            len(skipped),
            listing(skipped),
        )
    return report


def write_safetensors(path: Path, model: nn.Module, defaults: Mapping[str, Any]) -> None:
    """Write ``model``'s state dict to ``path`` with hesscli defaults in the header.

    Tied weights are stored once (``safetensors.torch.save_model``); the loader fills the twin.
    The file is written beside ``path`` and renamed into place, so a failure never leaves a
    half-written checkpoint, and the header's metadata keys are sorted so the same model and
    defaults always give the same bytes.

    Args:
        path: Output file.
        model: The model whose weights are written.
        defaults: Settings such as ``model``, ``data``, ``loss``; paths should already be
            relative to ``path``'s directory so the folder can be moved.
    """
    metadata = {"format": "pt", METADATA_KEY: json.dumps(dict(defaults), sort_keys=True)}
    partial = path.with_name(f".{path.name}.partial")
    try:
        save_model(model, str(partial), metadata=metadata)
        _sort_header_metadata(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def _sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its ``__metadata__`` keys sorted.

    safetensors writes metadata in the random order of a Rust ``HashMap`` (safetensors #584).
    Sorting keeps the header's length, so the tensor offsets stay valid; a header whose layout
    would not re-serialise byte for byte is left alone.
    """
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    text = raw[8 : 8 + length]
    header = json.loads(text)

    def dump(value: dict[str, Any]) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode().ljust(length)

    if "__metadata__" not in header or dump(header) != text:
        return
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    path.write_bytes(raw[:8] + dump(header) + raw[8 + length :])
