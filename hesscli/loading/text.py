"""Data as Hugging Face users have it: batch dicts and JSONL/CSV text.

Text is tokenised with the checkpoint folder's own tokenizer, all texts at once: padded to the
longest (on the right, so that real tokens keep their positions), truncated at the tokenizer's
``model_max_length`` (``--max-length`` changes it). The targets follow the model family, read
from the folder's ``config.json``:

- a causal LM (``architectures`` ending in ``ForCausalLM`` or ``LMHeadModel``) predicts its own
  tokens: the labels are ``input_ids`` with -100 where ``attention_mask`` is 0 (the loss shifts
  them by one position, as Hugging Face's does);
- any other model takes one label per text from ``--label-field``: an integer class id, a
  class name from ``config.label2id``, a float (regression), or a list (multi-label).

This module builds plain tensors and imports transformers only when it is needed (the optional
extra ``hesscli[hf]``); ``save_to_disk`` folders are read by :mod:`hesscli.loading.saved_dataset`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hesscli.batches import IGNORE_INDEX
from hesscli.errors import DataError
from hesscli.loading.huggingface import CAUSAL_LM, MASKED_LM, TOKEN_CLASSIFICATION, family_of

TEXT_SUFFIXES = (".jsonl", ".json", ".csv")
#: Files one of which a folder's tokenizer needs (transformers builds an empty one otherwise).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")
TOKENIZER_FILES += ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
_EXTRA = "install the Hugging Face extra: pip install 'hesscli[hf]'"


def read_model_config(folder: Path | None) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict (empty without a folder or a readable file)."""
    if folder is None or not (folder / "config.json").is_file():
        return {}
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def architectures(config: Mapping[str, Any]) -> list[str]:
    """The class names in ``config["architectures"]`` (strings only)."""
    return [name for name in config.get("architectures") or [] if isinstance(name, str)]


def is_causal_lm(config: Mapping[str, Any]) -> bool:
    """Whether ``config.json`` describes a causal LM (``...ForCausalLM``, ``...LMHeadModel``).

    Its loss is next-token cross-entropy: the labels are the tokens themselves, and the first
    position of every sequence is never a target (``Loss.shift`` = 1).
    """
    return any(family_of(name) == CAUSAL_LM for name in architectures(config))


def causal_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Labels of a causal LM: the tokens, -100 where the attention mask is 0 (padding)."""
    labels = input_ids.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE_INDEX
    return labels


@dataclass(frozen=True)
class TextOptions:
    """How to read text and Hugging Face batches.

    Attributes:
        folder: The checkpoint when it is a ``save_pretrained`` folder: its tokenizer encodes
            text, its ``config.json`` says the model family and the label names.
        text_field: ``--text-field`` (``None``: ``text``).
        label_field: ``--label-field`` (``None``: ``label``, or ``labels`` when that is there).
        max_length: ``--max-length`` (``None``: the tokenizer's ``model_max_length``).
        config: The folder's ``config.json`` (read from ``folder`` when not given).
    """

    folder: Path | None = None
    text_field: str | None = None
    label_field: str | None = None
    max_length: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.config:
            object.__setattr__(self, "config", read_model_config(self.folder))

    @property
    def causal(self) -> bool:
        """Whether the folder holds a causal LM."""
        return is_causal_lm(self.config)


def looks_like_hf_batch(mapping: Mapping[str, Any]) -> bool:
    """Whether a dict of tensors is a tokenised Hugging Face batch (it has ``input_ids``)."""
    return "input_ids" in mapping or "inputs_embeds" in mapping


def hf_batch(
    mapping: Mapping[str, Any], *, options: TextOptions, where: str
) -> tuple[dict[str, Any], Any]:
    """A Hugging Face batch dict as (model keyword arguments, targets).

    The inputs are every entry but ``labels``; the targets are ``labels`` or, for a causal LM,
    ``input_ids`` with -100 where ``attention_mask`` is 0.
    """
    inputs = {key: value for key, value in mapping.items() if key != "labels"}
    if "labels" in mapping:
        return inputs, mapping["labels"]
    if options.causal and "input_ids" in mapping:  # tensors, or numpy arrays from a .npz
        mask = mapping.get("attention_mask")
        mask = None if mask is None else torch.as_tensor(mask)
        return inputs, causal_labels(torch.as_tensor(mapping["input_ids"]), mask)
    keys = ", ".join(map(str, mapping))
    raise DataError(
        f"{where} is a Hugging Face batch without 'labels' (keys: {keys})",
        "add the labels to the dict (a causal LM folder needs none: its tokens are its labels)",
    )


# -- text files -------------------------------------------------------------------------------
def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL, JSON (a list of objects) or CSV file, in file order."""
    where = f"data file {path}"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where} cannot be read as text ({exc})", "save it as UTF-8") from exc
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        return [dict(row) for row in rows]
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{where} is not valid JSON ({exc})", "fix or re-export it") from exc
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise DataError(
                    f"{where}: line {number} is not valid JSON ({exc})",
                    "write one JSON object per line (JSONL)",
                ) from exc
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: record {number} is a {type(record).__name__}, not an object",
                'write one object per line, e.g. {"text": "...", "label": 1}',
            )
    return records


def load_tokenizer(folder: Path | None, *, where: str) -> Any:
    """The folder's own tokenizer, padding on the right with a pad token set.

    Raises:
        DataError: without a folder, without tokenizer files in it, or without transformers.
    """
    if folder is None:
        raise DataError(
            f"{where} is text, which needs a tokenizer, but the checkpoint is not a Hugging "
            "Face folder",
            "pass the save_pretrained folder (with its tokenizer) as CHECKPOINT, or a "
            "tokenised batch dict as --data",
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"{where} is text, but the checkpoint folder {folder} holds no tokenizer "
            f"(none of {', '.join(TOKENIZER_FILES[:2])}, ...)",
            "save it beside the model with tokenizer.save_pretrained(folder), or pass a "
            "tokenised batch dict as --data",
        )
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise DataError(f"{where} is text, which needs transformers to tokenise", _EXTRA) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        message = " ".join(str(exc).split())[:200]
        raise DataError(
            f"the tokenizer in {folder} cannot be loaded ({type(exc).__name__}: {message})",
            "re-save it with tokenizer.save_pretrained(folder)",
        ) from exc
    tokenizer.padding_side = "right"  # real tokens keep positions 0, 1, ... whatever the padding
    if tokenizer.pad_token is None:  # GPT-2 has none; padded positions are masked anyway
        spare = tokenizer.eos_token or tokenizer.unk_token
        if spare is None:
            raise DataError(
                f"the tokenizer in {folder} has no pad, end-of-text or unknown token to pad with",
                "set tokenizer.pad_token and re-save it, or pass a tokenised batch dict",
            )
        tokenizer.pad_token = spare
    return tokenizer


def _max_length(tokenizer: Any, options: TextOptions) -> int | None:
    if options.max_length is not None:
        if int(options.max_length) < 1:
            raise DataError(f"max_length must be at least 1, got {options.max_length}", "fix it")
        return int(options.max_length)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**9:  # transformers' "no limit" is 1e30
        return limit
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(options.config.get(key), int):
            return int(options.config[key])
    return None


def _field(records: Sequence[Mapping[str, Any]], name: str, option: str, where: str) -> list:
    for number, record in enumerate(records, start=1):
        if name not in record:
            found = ", ".join(map(str, record)) or "none"
            raise DataError(
                f"{where}: record {number} has no field {name!r} (fields: {found})",
                f"pass {option} with the field's name",
            )
    return [record[name] for record in records]


def encode_records(
    records: Sequence[Mapping[str, Any]], *, options: TextOptions, where: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Tokenise the text field of ``records``; targets from the model family (module doc)."""
    tokenizer = load_tokenizer(options.folder, where=where)
    architecture = next(iter(architectures(options.config)), "")
    if family_of(architecture) in (MASKED_LM, TOKEN_CLASSIFICATION):
        raise DataError(
            f"{where} gives one label per text, but {architecture} takes one label per token",
            "save a tokenised batch dict with 'input_ids', 'attention_mask' and 'labels'",
        )
    texts = _field(records, options.text_field or "text", "--text-field", where)
    for number, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise DataError(
                f"{where}: record {number}'s text is a {type(text).__name__}, not a string",
                "point --text-field at the field holding the text",
            )
    limit = _max_length(tokenizer, options)
    encoded = tokenizer(
        list(texts),
        padding="longest",
        truncation=limit is not None,
        max_length=limit,
        return_tensors="pt",
    )
    inputs = {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}
    if options.causal:
        return inputs, causal_labels(inputs["input_ids"], inputs.get("attention_mask"))
    return inputs, record_labels(records, options=options, where=where)


def record_labels(
    records: Sequence[Mapping[str, Any]], *, options: TextOptions, where: str
) -> torch.Tensor:
    """One label per record: class ids (names mapped by ``label2id``), floats or label lists."""
    name = options.label_field
    if name is None:
        first = records[0] if records else {}
        name = "labels" if "labels" in first and "label" not in first else "label"
    values = _field(records, name, "--label-field", where)
    regression = options.config.get("problem_type") == "regression" or (
        options.config.get("num_labels") == 1 or len(options.config.get("id2label") or {}) == 1
    )
    if any(isinstance(value, list) for value in values):
        return _label_lists(values, where=where)
    label2id = options.config.get("label2id") or {}
    converted = [_one_label(v, n, label2id, where) for n, v in enumerate(values, start=1)]
    if regression or any(isinstance(value, float) for value in converted):
        return torch.tensor([float(value) for value in converted], dtype=torch.get_default_dtype())
    return torch.tensor(converted, dtype=torch.int64)


def _one_label(value: Any, number: int, label2id: Mapping[str, Any], where: str) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        if value in label2id:
            return int(label2id[value])
        text = value.strip()
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        known = ", ".join(map(str, label2id)) if label2id else ""
        raise DataError(
            f"{where}: record {number}'s label {value!r} is not a number"
            + (f" nor a name in the model's label2id ({known})" if known else "")
            + ("" if known else " and the model's config.json has no label2id"),
            "use class ids (0, 1, ...) or the names of config.label2id",
        )
    raise DataError(
        f"{where}: record {number}'s label is a {type(value).__name__}",
        "store an integer class id, a class name, a number or a list of 0/1 labels",
    )


def _label_lists(values: Sequence[Any], *, where: str) -> torch.Tensor:
    """Multi-label targets: one list of 0/1 (or probabilities) per record, all one length."""
    lengths = {len(value) if isinstance(value, list) else -1 for value in values}
    if len(lengths) != 1 or -1 in lengths:
        raise DataError(
            f"{where}: label lists have different lengths ({sorted(lengths)})",
            "give every record a list with one entry per class (multi-label)",
        )
    try:
        return torch.tensor(values, dtype=torch.get_default_dtype())
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: label lists hold non-numbers", "store 0/1 per class") from exc
