"""Read checkpoints, load them into a model, and write self-describing ``.safetensors`` files.

Reads ``.safetensors`` and ``.pt``/``.pth``/``.bin``/``.ckpt`` files.
A checkpoint's format is sniffed from its first bytes rather than trusted from its extension.
PyTorch files are unpickled safely by :mod:`hesscli.loading.torch_pickle`; the state dict is then
found inside whatever training-loop container holds it.

Real training checkpoints hold more than the model: an epoch counter, optimizer states, a loss
buffer, a teacher network. Their keys are matched to the model by :mod:`hesscli.loading.keys`.
Whatever is not loaded is listed — in :class:`RawCheckpoint.ignored` (entries beside the state
dict) and :class:`~hesscli.loading.keys.KeyReport.ignored` (tensors left out) — and logged, never
dropped silently. Missing or mis-shaped weights are refused in every mode: they would leave the
model partly at its random initialisation, and every curvature number would be wrong without a
sign of it.
"""

from __future__ import annotations

import json
import logging
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
from hesscli.loading.keys import KeyReport, describe_mismatch, listing, match_keys, suggest_fix
from hesscli.loading.torch_pickle import exception_line, torch_load

#: Entries under which training loops and Lightning nest the model's state dict, most likely first.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
#: Key of the hesscli defaults inside a ``.safetensors`` header's metadata.
METADATA_KEY = "hesscli"

_SUFFIXES = ".safetensors, .pt, .pth, .bin, .ckpt"

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


def read_metadata(path: Path) -> dict[str, Any]:
    """The hesscli defaults stored in a ``.safetensors`` header (empty when there are none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint {path} has an unreadable safetensors header ({exception_line(exc)})",
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
                f"checkpoint {path} is truncated or corrupt ({exception_line(exc)})",
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
    obj = torch_load(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        return RawCheckpoint(path, kind, size, {}, module=obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), nn.Module):
                return RawCheckpoint(path, kind, size, {}, container=key, module=obj[key])
    tensors, container, ignored = unwrap_state_dict(obj)
    return RawCheckpoint(path, kind, size, tensors, container=container, ignored=ignored)


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
            suggest_fix(report, raw.tensors, model, strict=strict),
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
