"""Read checkpoints, match them to a model, and write self-describing ``.safetensors`` files.

Reads ``.safetensors`` and ``.pt``/``.pth``/``.bin`` files.
A checkpoint's format is sniffed from its first bytes rather than trusted from its extension.
PyTorch files are read with ``weights_only=True``; a full pickled ``nn.Module`` is only unpickled
when the caller passes ``trust_pickle=True``, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
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
#: Prefixes added by DataParallel/DDP (``module.``), Lightning (``model.``), ``torch.compile``.
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")
#: Key of the hesscli defaults inside a ``.safetensors`` header's metadata.
METADATA_KEY = "hesscli"

_SUFFIXES = ".safetensors, .pt, .pth, .bin, .ckpt"


@dataclass(frozen=True)
class RawCheckpoint:
    """What a checkpoint file holds, before it is matched to a model.

    Attributes:
        path: The file.
        format: ``"safetensors"``, ``"torch-zip"`` or ``"torch-legacy"``.
        size_bytes: File size.
        tensors: The (unwrapped) state dict; empty when the file holds a pickled module only.
        container: The nested entry the state dict came from (``"state_dict"``...), if any.
        ignored: Non-tensor entries next to the tensors that were skipped.
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
    """

    matched: int
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    tied: tuple[tuple[str, str], ...] = ()
    prefix: str = ""

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

    Looks at the object itself, then (recursively) under :data:`CONTAINER_KEYS`.

    Returns:
        The tensors, the dotted container path used (or ``None``), and skipped non-tensor keys.
    """
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                found = _try_unwrap(inner)
                if found is not None:
                    tensors, container, ignored = found
                    path = key if container is None else f"{key}.{container}"
                    return tensors, path, ignored
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


def _torch_load(path: Path, *, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
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


def _rename(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Apply a prefix change: ``-p`` strips ``p`` where present, ``+p`` adds it everywhere."""
    sign, text = prefix[0], prefix[1:]
    if sign == "-":
        return {k.removeprefix(text): v for k, v in tensors.items()}
    return {text + k: v for k, v in tensors.items()}


def align_keys(
    tensors: dict[str, torch.Tensor], model_keys: set[str], max_changes: int = 3
) -> tuple[dict[str, torch.Tensor], str]:
    """Strip or add wrapper prefixes (up to ``max_changes``) to match the most model keys.

    Stacked wrappers such as ``module._orig_mod.`` (DDP around ``torch.compile``) need two
    strips before any key matches, so every sequence of changes is tried, shortest first.

    Returns:
        The renamed tensors and the prefix changes made (e.g. ``"-module."``), ``""`` if none.
    """
    best = (len(model_keys & tensors.keys()), (), tensors)
    frontier: list[tuple[tuple[str, ...], dict[str, torch.Tensor]]] = [((), tensors)]
    for _ in range(max_changes):
        next_frontier = []
        for changes, current in frontier:
            for prefix in WRAPPER_PREFIXES:
                for change in (f"-{prefix}", f"+{prefix}"):
                    renamed = _rename(current, change)
                    if len(renamed) != len(current) or renamed.keys() == current.keys():
                        continue
                    path = (*changes, change)
                    score = len(model_keys & renamed.keys())
                    if score > best[0]:
                        best = (score, path, renamed)
                    next_frontier.append((path, renamed))
        frontier = next_frontier
    return best[2], " ".join(best[1])


def match_keys(tensors: dict[str, torch.Tensor], model: nn.Module) -> tuple[KeyReport, dict]:
    """Compare a state dict with a model's, after aligning wrapper prefixes.

    Returns:
        The report, and the aligned state dict restricted to the model's keys.
    """
    model_state = model.state_dict()
    aligned, prefix = align_keys(tensors, set(model_state))
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
    unexpected = tuple(k for k in aligned if k not in model_state)
    matched = len(model_state) - len(missing) - len(mismatched)
    report = KeyReport(matched, tuple(missing), unexpected, tuple(mismatched), tuple(tied), prefix)
    return report, {k: v for k, v in aligned.items() if k in model_state}


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


def load_into(model: nn.Module, raw: RawCheckpoint) -> KeyReport:
    """Load ``raw``'s tensors into ``model`` after checking every key and shape.

    Raises:
        CheckpointError: listing all missing, unexpected and mis-shaped keys.
        NumericalError: naming the weights that hold NaN or Inf.
    """
    report, state = match_keys(raw.tensors, model)
    if not report.ok:
        raise CheckpointError(
            f"checkpoint {raw.path} does not fit the model: {describe_mismatch(report)}",
            "check --model and --model-kwargs match the checkpoint's architecture",
        )
    check_finite_state(state, where=f"checkpoint {raw.path.name} weights")
    model.load_state_dict(state, strict=False)
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
