"""``hesscli convert``: a self-describing ``.safetensors`` that names its model, data and loss.

Written only after the problem loads and checks, so the defaults it stores are known to work.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hesscli import __version__
from hesscli.engine.functional import DEFAULT_MICRO_BATCH
from hesscli.engine.params import list_layers
from hesscli.errors import ConfigError
from hesscli.loading.checkpoint import write_safetensors
from hesscli.loading.config import Sourced, metadata_may_name
from hesscli.loading.guard import refuse_to_overwrite
from hesscli.loading.huggingface import is_pretrained_folder
from hesscli.loading.imports import absolute_path, looks_like_spec, parse_spec
from hesscli.loading.losses import BUILTIN_LOSSES
from hesscli.loading.model_spec import parse_model_kwargs
from hesscli.loading.problem import load_problem, problem_files
from hesscli.results import ConvertResults, Cost, Report, RunSettings
from hesscli.runs.envelope import dtype_name, run_inputs
from hesscli.runs.prepare import Request


def _stored(setting: Sourced, out_dir: Path) -> str | None:
    """A path or ``file.py:Name`` setting as it should be stored in metadata beside ``out_dir``.

    Returns:
        The setting relative to ``out_dir``, or ``None`` when it names code that readers of the
        metadata would refuse to import (an installed module, or a file outside ``out_dir``).
    """
    text = str(setting.value)
    path = absolute_path(text, setting.base)
    if path.exists():
        return Path(os.path.relpath(path.resolve(), out_dir)).as_posix()
    if not looks_like_spec(text):
        return text
    spec = parse_spec(text, base=setting.base, what="setting", error=ConfigError)
    if not metadata_may_name(spec, out_dir):
        return None
    return f"{Path(os.path.relpath(spec.target, out_dir)).as_posix()}:{spec.name}"


def run_convert(request: Request, *, output: Path) -> Report:
    """Write the checkpoint as a ``.safetensors`` that carries its model, data and loss.

    The problem is loaded and checked first, so the defaults written are known to work;
    paths are stored relative to the output's folder. Code outside that folder is not stored
    (readers refuse it) and is reported in ``not_stored``. No input file is ever overwritten.
    The result comes in the common envelope (inputs, settings, cost), like every command's.
    """
    start = time.perf_counter()
    if output.suffix != ".safetensors":
        raise ConfigError(f"--output {output} must end in .safetensors", "rename the output")
    settings, config = request.settings()
    folder = Path(settings["checkpoint"].value)
    if is_pretrained_folder(folder) and settings["model"].value is None:
        raise ConfigError(
            f"{folder} is a Hugging Face folder: its config.json already names its model, "
            "which a .safetensors file cannot",
            "pass the folder itself as the checkpoint to every command",
        )
    problem = load_problem(settings, trust_pickle=request.trust_pickle)
    out = absolute_path(output, request.cwd)
    refuse_to_overwrite(out, problem_files(problem, config))
    out_dir = out.parent.resolve()
    if not out_dir.is_dir():
        raise ConfigError(f"folder {out.parent} does not exist", "create it first")
    defaults: dict[str, Any] = {"loss": problem.loss.name}
    not_stored: dict[str, str] = {}
    keys = ["model", "data"] + ([] if problem.loss.name in BUILTIN_LOSSES else ["loss"])
    for key in keys:
        if settings[key].value is None:
            continue
        stored = _stored(settings[key], out_dir)
        if stored is None:
            defaults.pop(key, None)
            not_stored[key] = (
                f"{settings[key].value} is code outside {out_dir}; readers pass --{key}"
            )
        else:
            defaults[key] = stored
    kwargs = settings["model_kwargs"]
    if kwargs.value and "model" in defaults:
        defaults["model_kwargs"] = (
            kwargs.value if isinstance(kwargs.value, dict) else parse_model_kwargs(kwargs.value)
        )
    write_safetensors(out, problem.model, defaults)
    results = ConvertResults(
        source=str(problem.checkpoint.path),
        written=str(out),
        tensors=problem.key_report.matched,
        metadata=defaults,
        not_stored=not_stored,
    )
    weights = next(iter(problem.model.parameters()), None)
    return Report(
        command="convert",
        inputs=run_inputs(problem, list_layers(problem.model), config),
        settings=RunSettings(
            curvature=str(settings["curvature"].value).lower(),
            device="cpu",  # convert computes nothing: the weights are copied as read
            dtype=dtype_name(weights.dtype) if weights is not None else "float32",
            seed=settings["seed"].value,
            micro_batch=settings["micro_batch"].value or DEFAULT_MICRO_BATCH,
            max_samples=settings["max_samples"].value,
            train_mode=bool(settings["train_mode"].value),
            sources={k: v.source for k, v in sorted(settings.items()) if v.value is not None},
        ),
        results=results,
        cost=Cost(seconds=time.perf_counter() - start),
        hesscli_version=__version__,
        input_files=problem_files(problem, config),
    )
