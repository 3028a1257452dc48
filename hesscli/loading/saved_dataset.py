"""Data sets saved with ``datasets``' ``save_to_disk``: one split, tokenised or as text.

Tokenised columns (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``) are padded
on the right to the longest row and used as they are; a data set without ``input_ids`` has its
text column tokenised like a text file (:mod:`hesscli.loading.text`). ``datasets`` is imported
only here, and only when such a folder is read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hesscli.errors import DataError
from hesscli.loading.text import (
    IGNORE_INDEX,
    TextOptions,
    causal_labels,
    encode_records,
    record_labels,
)

#: What tokenised columns are padded with (``input_ids``: the pad token id, else 0).
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "position_ids": 0, "labels": IGNORE_INDEX}


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``datasets``' ``save_to_disk``."""
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file()
        or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())
    )


def read_saved_dataset(
    path: Path, *, options: TextOptions, max_samples: int | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """A ``save_to_disk`` folder as (inputs, targets, rows available).

    Tokenised columns (``input_ids`` ...) are padded and used as they are; otherwise the text
    column is tokenised like a text file.
    """
    where = f"dataset folder {path}"
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{where} was saved by datasets, which is not installed", "pip install datasets"
        ) from exc
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DataError(
            f"{where} holds several splits ({', '.join(map(str, splits))})",
            f"pass one of them, e.g. --data {path / (splits[-1] if splits else 'validation')}",
        )
    try:
        table = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(
            f"{where} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})",
            "re-save it with Dataset.save_to_disk",
        ) from exc
    available = len(table)
    if available == 0:
        raise DataError(f"{where} holds no samples", "give at least one row")
    rows = table.select(range(min(available, max_samples or available))).to_list()
    if "input_ids" not in table.column_names:
        inputs, targets = encode_records(rows, options=options, where=where)
        return inputs, targets, available
    inputs = _pad_columns(rows, options=options)
    if "labels" in inputs:
        return inputs, inputs.pop("labels"), available
    if options.causal:
        return inputs, causal_labels(inputs["input_ids"], inputs.get("attention_mask")), available
    return inputs, record_labels(rows, options=options, where=where), available


def _pad_columns(rows: Sequence[Mapping[str, Any]], *, options: TextOptions) -> dict:
    """Tokenised columns padded on the right to the longest row (labels with -100)."""
    pad_id = options.config.get("pad_token_id")
    columns = [k for k in ("input_ids", *_PAD_VALUES) if isinstance(rows[0].get(k), list)]
    cut = options.max_length  # --max-length truncates tokenised rows too
    lengths = [len(row["input_ids"][:cut]) for row in rows]
    longest = max(lengths)
    padded = {}
    for key in columns:
        fill = _PAD_VALUES.get(key, pad_id if isinstance(pad_id, int) else 0)
        padded[key] = torch.tensor(
            [
                list(row[key][:cut]) + [fill] * (longest - n)
                for row, n in zip(rows, lengths, strict=True)
            ],
            dtype=torch.int64,
        )
    if "attention_mask" not in padded:
        padded["attention_mask"] = torch.tensor([[1] * n + [0] * (longest - n) for n in lengths])
    return padded
