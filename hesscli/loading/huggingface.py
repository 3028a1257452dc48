"""Hugging Face ``save_pretrained`` folders as checkpoints: the model is built from its config.

A folder holding ``config.json`` is a checkpoint by itself. The architecture named in the config
(``architectures[0]``, a class of ``transformers``) is built from the config alone, then the
folder's weights are loaded with hesscli's own strict matching (:func:`load_into`): every weight
must be there with its shape, tied weights are filled from their twin, and nothing the model has
no place for is accepted silently; :mod:`hesscli.loading.hf_weights` reads the weight files.
hesscli never runs code from the folder: a config that asks for ``trust_remote_code`` is refused.

Attention is built with ``attn_implementation="eager"``: plain matrix products and a softmax,
which have forward-mode and double-backward rules in every dtype, so no fused kernel stands
between the weights and their second derivatives. The cache of past keys and values is off
(``use_cache=False``): a curvature run never generates.

The model *family* (sequence classification, causal LM, masked LM, token classification) gives
the default loss, resolved in :mod:`hesscli.loading.losses`. ``transformers`` is an optional
extra (``pip install "hesscli[hf]"``), imported only when a folder is read.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from hesscli.errors import CheckpointError, LossError, ModelSpecError
from hesscli.loading.checkpoint import RawCheckpoint
from hesscli.loading.hf_weights import WEIGHT_FILES, read_folder_weights

CONFIG = "config.json"
INSTALL = 'pip install "hesscli[hf]"'
ATTENTION = "eager"

SEQUENCE_CLASSIFICATION = "sequence classification"
CAUSAL_LM = "causal LM"
MASKED_LM = "masked LM"
TOKEN_CLASSIFICATION = "token classification"
#: Class-name endings of each family, for architectures transformers' mappings do not list.
_SUFFIXES = {
    SEQUENCE_CLASSIFICATION: ("ForSequenceClassification",),
    CAUSAL_LM: ("ForCausalLM", "LMHeadModel"),
    MASKED_LM: ("ForMaskedLM",),
    TOKEN_CLASSIFICATION: ("ForTokenClassification",),
}
#: transformers' name-mapping of each family (``model_type -> class name``).
_MAPPINGS = {
    SEQUENCE_CLASSIFICATION: "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    CAUSAL_LM: "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    MASKED_LM: "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    TOKEN_CLASSIFICATION: "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
}


@dataclass(frozen=True)
class Pretrained:
    """A model built from a ``save_pretrained`` folder, with the weights it will be loaded with.

    Attributes:
        model: The model at its random initialisation (weights not loaded yet), eval mode.
        architecture: The class built (``BertForSequenceClassification``).
        family: :data:`SEQUENCE_CLASSIFICATION`, :data:`CAUSAL_LM`, :data:`MASKED_LM`,
            :data:`TOKEN_CLASSIFICATION`, or ``None`` for a model without a known task head.
        config: The ``transformers`` config the model was built from.
        weights: The folder's tensors (shards merged); ``path`` is the folder.
        ignorable: Regular expressions of checkpoint keys the architecture declares obsolete
            (``attn.bias`` buffers of old GPT-2 saves), left out and listed when present.
        label: What was built, in a few words, for the plan line and ``inputs.model``.
    """

    model: nn.Module
    architecture: str
    family: str | None
    config: Any
    weights: RawCheckpoint
    ignorable: tuple[str, ...]
    label: str


def is_pretrained_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding ``config.json`` (a ``save_pretrained`` folder)."""
    return path.is_dir() and (path / CONFIG).is_file()


def import_transformers(folder: Path) -> ModuleType:
    """``transformers``, or one line naming the extra that installs it."""
    try:
        import transformers
    except ImportError as exc:
        raise ModelSpecError(
            f"{folder} is a Hugging Face folder, and reading it needs transformers, which is "
            "not installed",
            f"install the extra: {INSTALL}",
        ) from exc
    return transformers


@contextlib.contextmanager
def _quiet(transformers: ModuleType) -> Iterator[None]:
    """Keep transformers' own warnings (config sanity notes) off stderr while building."""
    logging_module = transformers.utils.logging
    level = logging_module.get_verbosity()
    logging_module.set_verbosity_error()
    try:
        yield
    finally:
        logging_module.set_verbosity(level)


def _read_config_json(folder: Path) -> dict[str, Any]:
    try:
        value = json.loads((folder / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{folder / CONFIG} is not readable JSON ({type(exc).__name__})",
            "re-save the folder with model.save_pretrained(folder)",
        ) from exc
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{folder / CONFIG} is not a JSON object", "re-save it with model.save_pretrained"
        )
    return value


def family_of(architecture: str, transformers: ModuleType | None = None) -> str | None:
    """The task family of a transformers class name, or ``None`` (no known task head)."""
    if transformers is not None:
        auto = getattr(getattr(transformers, "models", None), "auto", None)
        names = getattr(auto, "modeling_auto", None)
        for family, mapping in _MAPPINGS.items():
            if architecture in getattr(names, mapping, {}).values():
                return family
    for family, endings in _SUFFIXES.items():
        if architecture.endswith(endings):
            return family
    return None


def _architecture(folder: Path, raw_config: dict[str, Any], transformers: ModuleType) -> type:
    """The transformers class named by the config (``architectures[0]``)."""
    if "auto_map" in raw_config:
        raise ModelSpecError(
            f"{folder / CONFIG} asks for custom model code (auto_map), which hesscli does not "
            "run from a checkpoint folder",
            "pass --model path/to/modeling_file.py:Class if you trust that code",
        )
    names = raw_config.get("architectures") or []
    if not names:
        raise ModelSpecError(
            f"{folder / CONFIG} names no architecture ('architectures' is missing)",
            "re-save the folder with model.save_pretrained (it writes the class name), or "
            "pass --model",
        )
    name = str(names[0])
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelSpecError(
            f"{folder / CONFIG} names architecture {name!r}, which transformers "
            f"{transformers.__version__} does not have",
            "upgrade transformers (pip install -U transformers), or pass --model",
        )
    return cls


def build_pretrained(
    folder: Path, *, architecture: str | None = None, with_weights: bool = True
) -> Pretrained:
    """Build the model a ``save_pretrained`` folder describes and read its weights.

    Args:
        folder: The folder (holding ``config.json``).
        architecture: A transformers class to build instead of the config's own
            (``--model transformers:BertForSequenceClassification``).
        with_weights: Read the weight files too (else ``weights`` holds no tensors).

    Raises:
        ModelSpecError: transformers missing, or an architecture it cannot build.
        CheckpointError: no weights, or unreadable config or weights.
    """
    raw_config = _read_config_json(folder)
    transformers = import_transformers(folder)
    if architecture is not None:
        raw_config = {**raw_config, "architectures": [architecture]}
    cls = _architecture(folder, raw_config, transformers)
    weights = read_folder_weights(folder) if with_weights else None
    with _quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder))
            config.use_cache = False
            model = cls._from_config(config, attn_implementation=ATTENTION)
        except Exception as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise ModelSpecError(
                f"transformers {transformers.__version__} cannot build {cls.__name__} from "
                f"{folder / CONFIG}: {text}",
                "check that config.json matches the architecture, or upgrade transformers",
            ) from exc
    model.eval()
    family = family_of(cls.__name__, transformers)
    label = f"{cls.__name__} (transformers {transformers.__version__}, {ATTENTION} attention)"
    ignorable = tuple(getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or ())
    empty = RawCheckpoint(folder, "huggingface", 0, {})
    return Pretrained(model, cls.__name__, family, config, weights or empty, ignorable, label)


def refuse_folder(path: Path) -> None:
    """A folder that is not a ``save_pretrained`` folder: one line saying what it lacks."""
    inside = sorted(
        p.name for p in path.iterdir() if p.suffix in {".safetensors", ".pt", ".pth", ".bin"}
    )
    sharded = any(p.name.endswith(".index.json") for p in path.iterdir())
    if sharded or any(name in inside for name, _ in WEIGHT_FILES):
        hint = (
            "it looks like a Hugging Face save without its config: save the model there with "
            "model.save_pretrained(folder), which writes config.json"
        )
    elif inside:
        hint = f"pass a file inside it, e.g. {path / inside[0]}"
    else:
        hint = "pass a checkpoint file, or a folder written by model.save_pretrained"
    raise CheckpointError(f"checkpoint {path} is a directory without {CONFIG}", hint)


def default_loss(pretrained: Pretrained, targets: torch.Tensor) -> tuple[str, str, bool]:
    """The loss the model family defines, as Hugging Face's own heads compute it.

    Sequence classification follows ``config.problem_type`` (or, when unset, the rule of the
    transformers heads: one label → regression, integer labels → single-label, else
    multi-label); a causal LM is scored on the next token; masked LM and token classification
    on every token whose label is not -100.

    Returns:
        The built-in loss name, why it was chosen, and whether a regression head's ``(N, 1)``
        logits are compared with ``(N,)`` labels (the last dimension dropped).

    Raises:
        LossError: the architecture has no task head hesscli knows a loss for.
    """
    arch, family = pretrained.architecture, pretrained.family
    why = f"inferred from the model family ({arch}: {family}"
    if family == CAUSAL_LM:
        return "next_token_cross_entropy", why + ")", False
    if family in {MASKED_LM, TOKEN_CLASSIFICATION}:
        return "token_cross_entropy", why + ")", False
    if family != SEQUENCE_CLASSIFICATION:
        raise LossError(
            f"{arch} has no task head hesscli knows a default loss for",
            "pass --loss (a built-in name, or module:function taking the model's outputs)",
        )
    problem = getattr(pretrained.config, "problem_type", None)
    labels = int(getattr(pretrained.config, "num_labels", 0) or 0)
    integer = not (targets.is_floating_point() or targets.dtype == torch.bool)
    if problem is None:
        if labels == 1:
            problem = "regression"
        elif integer:
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
        why += f", problem type {problem} by num_labels={labels} and {targets.dtype} labels)"
    else:
        why += f", problem_type {problem})"
    if problem == "regression":
        squeeze = labels == 1 and targets.ndim == 1
        return "mse", why, squeeze
    if problem == "multi_label_classification":
        return "bce_with_logits", why, False
    return "cross_entropy", why, False
