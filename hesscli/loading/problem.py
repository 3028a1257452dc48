"""Turn options, project config and checkpoint metadata into a loaded, validated problem.

A *problem* is everything a curvature computation needs: the model with its checkpoint weights,
the data set and the loss, checked against each other with one cheap forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hesscli.batches import Dataset, apply_model, input_tensors
from hesscli.errors import CheckpointError, ConfigError, DataError, ModelSpecError
from hesscli.loading import hf_weights, huggingface, outputs
from hesscli.loading.checkpoint import (
    RawCheckpoint,
    check_finite_state,
    load_into,
    read_checkpoint,
)
from hesscli.loading.config import (
    DEFAULT,
    ConfigFile,
    Sourced,
    checkpoint_defaults,
    find_config,
    merge_settings,
    read_config,
)
from hesscli.loading.data import load_data
from hesscli.loading.guard import refuse_special_file
from hesscli.loading.imports import absolute_path, looks_like_spec, package_file
from hesscli.loading.keys import KeyReport
from hesscli.loading.losses import (
    BUILTIN_LOSSES,
    Loss,
    builtin_loss,
    check_class_range,
    check_fit,
    resolve_loss,
)
from hesscli.loading.model_spec import build_model, parse_model_kwargs
from hesscli.loading.text import TextOptions

#: Built-in defaults for every setting.
DEFAULTS: dict[str, Any] = {
    "checkpoint": None,
    "model": None,
    "model_kwargs": None,
    "data": None,
    "loss": None,
    "output_key": None,
    "text_field": None,
    "label_field": None,
    "max_length": None,
    "max_samples": None,
    "micro_batch": None,
    "device": "auto",
    "dtype": "float32",
    "seed": 0,
    "curvature": "hessian",
    "hvp_method": "auto",
    "train_mode": False,
    "distributed": None,
    "max_memory": None,
    "normalisation": "auto",
    "strict": True,
    "checkpoint_prefix": None,
}
#: Source of a loss that is a Hugging Face model family's default (``settings.sources``).
MODEL_FAMILY = "model family"
#: Samples run through the model to check that data, model and loss fit together.
_PROBE_SAMPLES = 8


@dataclass(frozen=True)
class Problem:
    """A model with its weights, data and loss, checked to fit together.

    Attributes:
        model: The model on the CPU, weights loaded, in eval mode.
        model_label: The model spec, or ``pickled <Class>`` for a trusted pickled module.
        checkpoint: What the checkpoint file held.
        key_report: How its keys matched the model.
        dataset: The evaluation data.
        loss: The loss and how it was chosen.
        output_shape: Model output shape on the first few samples.
        settings: Every setting with its source.
    """

    model: nn.Module
    model_label: str
    checkpoint: RawCheckpoint
    key_report: KeyReport
    dataset: Dataset
    loss: Loss
    output_shape: tuple[int, ...]
    settings: dict[str, Sourced]


def resolve_settings(
    options: Mapping[str, Any], *, cwd: Path, config_path: Path | None, use_config: bool
) -> tuple[dict[str, Sourced], ConfigFile | None]:
    """Merge command-line options with checkpoint metadata, project config and defaults."""
    config = None
    if config_path is not None:
        path = absolute_path(config_path, cwd)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}", "check the --config path")
        config = read_config(path)
        if config is None:
            raise ConfigError(f"{path} has no [tool.hesscli] table", "add one or drop --config")
    elif use_config:
        config = find_config(cwd)
    checkpoint = options.get("checkpoint")
    if checkpoint is not None:
        checkpoint_path = _checkpoint_path(checkpoint, cwd)
    elif config is not None and "checkpoint" in config.values:
        checkpoint_path = _checkpoint_path(config.values["checkpoint"], config.path.parent)
    else:
        raise CheckpointError(
            "no checkpoint given", "pass CHECKPOINT, or set checkpoint in hesscli.toml"
        )
    metadata = checkpoint_defaults(checkpoint_path)
    settings = merge_settings(
        {**options, "checkpoint": str(checkpoint_path)},
        cwd=cwd,
        config=config,
        metadata=metadata,
        checkpoint_dir=checkpoint_path.parent,
        defaults=DEFAULTS,
    )
    return settings, config


def _checkpoint_path(text: str, base: Path) -> Path:
    """A file path, or ``package:path/inside`` for weights an installed pip package ships."""
    path = absolute_path(text, base)
    if path.exists():
        return path
    return package_file(str(text)) or path


def _model_kwargs(setting: Sourced) -> dict[str, Any]:
    if isinstance(setting.value, dict):
        return dict(setting.value)
    return parse_model_kwargs(setting.value)


def _build(settings: dict[str, Sourced], raw: RawCheckpoint) -> tuple[nn.Module, str]:
    spec = settings["model"]
    if spec.value is None:
        if raw.module is not None:
            return raw.module, f"pickled {type(raw.module).__name__}"
        raise ModelSpecError(
            "no model definition given",
            "pass --model path/to/file.py:Class, set model in hesscli.toml, or store it in "
            "the checkpoint with 'hesscli convert'",
        )
    model = build_model(spec.value, _model_kwargs(settings["model_kwargs"]), base=spec.base)
    return model, spec.value


def _probe(
    model: nn.Module,
    dataset: Dataset,
    loss_setting: Sourced,
    output_key: Sourced,
    pretrained: huggingface.Pretrained | None,
) -> tuple[Loss, tuple, outputs.Selection | None]:
    """Run a few samples through the model in eval mode to check data, model and loss fit.

    Also resolves the loss (the model family's by default for a Hugging Face folder) and
    which of the model's outputs it sees (:mod:`hesscli.loading.outputs`).

    Returns:
        The loss, the shape of the outputs it sees (empty when a ``module:function`` loss
        takes a whole dict or tuple), and the output selected for it, if one was.
    """
    first = dataset.first.slice(0, _PROBE_SAMPLES)
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in input_tensors(first.inputs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            produced = apply_model(model, first.inputs)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"data ({shapes} per batch of {first.size}) does not fit the model: {message}",
            "check that --data matches --model",
        ) from exc
    finally:
        model.train(was_training)
    how = loss_setting.source if loss_setting.source != DEFAULT else "default"
    squeeze = False
    if loss_setting.value is None and pretrained is not None:
        name, why, squeeze = huggingface.default_loss(pretrained, first.targets)
        loss = builtin_loss(name, why)
    else:
        loss = resolve_loss(loss_setting.value, first.targets, base=loss_setting.base, how=how)
    key = output_key.value
    selection = outputs.choose(
        produced, None if key is None else str(key), whole_by_default=not _builtin(loss)
    )
    if selection is not None:
        if squeeze and selection.key == outputs.DEFAULT_KEY:
            selection = outputs.Selection(selection.key, squeeze_last=True)
        produced = selection.pick(produced)
        outputs.install(model, selection)
    check_fit(loss, produced, first.targets)
    if not isinstance(produced, torch.Tensor):  # a module:function loss takes the whole output
        return loss, (), selection
    if produced.ndim >= 2:
        for batch in dataset.batches:
            check_class_range(loss, batch.targets, tuple(produced.shape))
    return loss, tuple(produced.shape), selection


def _builtin(loss: Loss) -> bool:
    return loss.name in BUILTIN_LOSSES


def load_problem(settings: dict[str, Sourced], *, trust_pickle: bool = False) -> Problem:
    """Load checkpoint, model, data and loss, and check them against each other.

    Args:
        settings: Output of :func:`resolve_settings`.
        trust_pickle: Allow unpickling a full ``nn.Module`` (runs code from the file).
    """
    path = Path(settings["checkpoint"].value)
    refuse_special_file(path, what="checkpoint", error=CheckpointError)  # never open a FIFO
    pretrained = None
    spec = settings["model"].value
    if huggingface.is_pretrained_folder(path):
        if spec is None or str(spec).startswith("transformers:"):
            pretrained, raw = _pretrained(path, settings)
            model, label = pretrained.model, pretrained.label
        else:  # the user's own module, with the folder's weights
            raw = hf_weights.read_folder_weights(path)
            model, label = _build(settings, raw)
    else:
        if path.is_dir():
            huggingface.refuse_folder(path)
        raw = read_checkpoint(path, trust_pickle=trust_pickle)
        model, label = _build(settings, raw)
    if raw.module is not None and model is raw.module:
        state = model.state_dict()
        check_finite_state(state, where=f"pickled model {path.name} weights")
        report = KeyReport(matched=len(state))
    else:
        source = raw if raw.module is None else _as_state(raw)
        report = load_into(
            model,
            source,
            strict=bool(settings["strict"].value),
            checkpoint_prefix=settings["checkpoint_prefix"].value,
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelSpecError(
            f"model {label} has no trainable parameters",
            "unfreeze the parameters to analyse (requires_grad=True) in the model definition",
        )
    data = settings["data"]
    if data.value is None:
        raise DataError(
            "no data given", "pass --data FILE (or module:function), or set data in hesscli.toml"
        )
    seed = settings["seed"].value
    if seed is not None:
        if not 0 <= int(seed) < 2**63:
            name = "--seed" if settings["seed"].source == "option" else "seed"
            raise ConfigError(f"{name} {seed} is out of range", "use one in [0, 2**63 - 1]")
        torch.manual_seed(int(seed))
    text = TextOptions(
        folder=path if path.is_dir() else None,  # a save_pretrained folder: its tokenizer
        text_field=settings["text_field"].value,
        label_field=settings["label_field"].value,
        max_length=settings["max_length"].value,
    )
    dataset = load_data(
        data.value, base=data.base, max_samples=settings["max_samples"].value, text=text
    )
    model.eval()
    loss, output_shape, selection = _probe(
        model, dataset, settings["loss"], settings["output_key"], pretrained
    )
    if selection is not None:  # the model now returns that output: say so wherever it is named
        label = f"{label} → {selection.describe()}"
    if pretrained is not None and settings["loss"].value is None:  # the family's default loss
        settings = {**settings, "loss": Sourced(loss.name, MODEL_FAMILY, path)}
    return Problem(model, label, raw, report, dataset, loss, output_shape, settings)


def _pretrained(
    folder: Path, settings: dict[str, Sourced]
) -> tuple[huggingface.Pretrained, RawCheckpoint]:
    """Build a Hugging Face folder's model (``--model transformers:Class`` picks the class)."""
    spec = settings["model"].value
    architecture = None
    if isinstance(spec, str) and spec.startswith("transformers:"):
        architecture = spec.partition(":")[2]
    pretrained = huggingface.build_pretrained(folder, architecture=architecture)
    raw = hf_weights.leave_out_obsolete(pretrained.weights, pretrained.model, pretrained.ignorable)
    return pretrained, raw


def _as_state(raw: RawCheckpoint) -> RawCheckpoint:
    """A pickled module's weights as a plain state-dict checkpoint."""
    assert raw.module is not None
    return RawCheckpoint(
        raw.path, raw.format, raw.size_bytes, dict(raw.module.state_dict()), raw.container
    )


def problem_files(problem: Problem, config: ConfigFile | None) -> tuple[str, ...]:
    """Every file a problem was read from: checkpoint, data, model and loss code, config."""
    files = [str(problem.checkpoint.path)]
    for key in ("data", "model", "loss"):
        setting = problem.settings[key]
        if setting.value is None:
            continue
        text = str(setting.value)
        path = absolute_path(text, setting.base)
        if path.exists():
            files.append(str(path))
        elif looks_like_spec(text):
            files.append(str(absolute_path(text.rpartition(":")[0], setting.base)))
    if config is not None:
        files.append(str(config.path))
    return tuple(files)
