"""The weight files of a Hugging Face ``save_pretrained`` folder, read as hesscli reads files.

A folder keeps its weights in ``model.safetensors``, in safetensors shards listed in
``model.safetensors.index.json``, or in ``pytorch_model.bin`` (and its shard index); the first
found wins. Every file goes through :func:`read_checkpoint` (``weights_only=True`` for ``.bin``),
the shards merge into one :class:`RawCheckpoint`, and keys transformers itself deems obsolete are
left out by name. Kept apart from :mod:`hesscli.loading.huggingface`, which builds the model: a
user's own ``--model`` reads a folder's weights without ``transformers``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from hesscli.errors import CheckpointError
from hesscli.loading.checkpoint import RawCheckpoint, read_checkpoint

#: Weight files of a folder, most preferred first: (single file, shard index).
WEIGHT_FILES = (
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)


def _weight_files(folder: Path) -> tuple[list[Path], str]:
    """The files holding the folder's weights, and how they were found."""
    for single, index in WEIGHT_FILES:
        if (folder / single).is_file():
            return [folder / single], single
        if (folder / index).is_file():
            return _shards(folder, folder / index), index
    present = sorted(p.name for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"})
    found = f" (found {', '.join(present[:4])})" if present else ""
    raise CheckpointError(
        f"Hugging Face folder {folder} has no weights: no model.safetensors, "
        f"pytorch_model.bin or shard index{found}",
        "save the model into it with model.save_pretrained(folder)",
    )


def _shards(folder: Path, index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = list(dict.fromkeys(str(v) for v in weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"shard index {index} is not a valid index (no 'weight_map')",
            "re-save the folder with model.save_pretrained(folder)",
        ) from exc
    files = [folder / name for name in names]
    absent = [f.name for f in files if not f.is_file() or f.parent.resolve() != folder.resolve()]
    if absent or not files:
        raise CheckpointError(
            f"shard index {index.name} in {folder} lists shards that are not there: "
            f"{', '.join(absent[:4]) or 'none'}",
            "copy every shard into the folder (or re-save it with model.save_pretrained)",
        )
    return files


def read_folder_weights(folder: Path) -> RawCheckpoint:
    """Every tensor of the folder's weight files, shards merged, read as hesscli reads files."""
    files, found = _weight_files(folder)
    tensors: dict[str, torch.Tensor] = {}
    size, kinds = 0, set()
    for file in files:
        raw = read_checkpoint(file)
        clash = sorted(set(tensors) & set(raw.tensors))
        if clash:
            raise CheckpointError(
                f"shards of {folder} hold {clash[0]!r} twice", "re-save the folder"
            )
        tensors.update(raw.tensors)
        size += raw.size_bytes
        kinds.add(raw.format)
    # The format is one of the info schema's; which files held the weights is the container.
    shards = f" ({len(files)} shards)" if len(files) > 1 else ""
    return RawCheckpoint(
        folder, f"huggingface-{min(kinds)}", size, tensors, container=found + shards
    )


def leave_out_obsolete(
    weights: RawCheckpoint, model: nn.Module, patterns: tuple[str, ...]
) -> RawCheckpoint:
    """Drop checkpoint keys the model has no place for, where transformers says they are stale.

    Two kinds, as transformers' own loader: keys the architecture declares ignorable (old
    GPT-2 saves' ``attn.bias`` masks), and the model's *non-persistent* buffers saved by an
    older transformers that kept them (``embeddings.position_ids``: an ``arange`` the model
    builds itself). They are named in :attr:`RawCheckpoint.ignored`, so the load lists them;
    any other key the model lacks stays a strict-matching error.
    """
    model_keys = set(model.state_dict())
    buffers = {name for name, _ in model.named_buffers()} - model_keys
    dropped = tuple(
        key
        for key in weights.tensors
        if key not in model_keys and (key in buffers or any(re.search(p, key) for p in patterns))
    )
    if not dropped:
        return weights
    kept = {k: v for k, v in weights.tensors.items() if k not in set(dropped)}
    return RawCheckpoint(
        weights.path, weights.format, weights.size_bytes, kept, ignored=weights.ignored + dropped
    )
