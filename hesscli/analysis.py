"""Orchestration: options → loaded problem → engine → result objects. No printing."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hesscli import __version__
from hesscli.batches import Dataset, input_tensors
from hesscli.engine.device import resolve_device, resolve_dtype
from hesscli.engine.distributed import Group, join, shard, weighting_for
from hesscli.engine.functional import DEFAULT_MICRO_BATCH, prepare_model
from hesscli.engine.gradient import loss_and_gradient
from hesscli.engine.memory import automatic_budget, parse_size
from hesscli.engine.operator import DEFAULT_CHUNK, CurvatureOperator
from hesscli.engine.params import Layer, list_layers, select_layers
from hesscli.engine.precision import matmul_precision, tf32_used
from hesscli.engine.routes import METHODS
from hesscli.engine.weighting import Weighting
from hesscli.errors import ConfigError, LayerError
from hesscli.loading.additivity import check_additive
from hesscli.loading.checkpoint import write_safetensors
from hesscli.loading.config import SETTING_TYPES, ConfigFile, Sourced, metadata_may_name
from hesscli.loading.guard import refuse_to_overwrite
from hesscli.loading.huggingface import is_pretrained_folder
from hesscli.loading.imports import absolute_path, looks_like_spec, parse_spec
from hesscli.loading.losses import BUILTIN_LOSSES, resolve_normalisation
from hesscli.loading.model_spec import parse_model_kwargs
from hesscli.loading.problem import Problem, load_problem, problem_files, resolve_settings
from hesscli.results import (
    CheckpointInfo,
    ConvertResults,
    Cost,
    DataInfo,
    GradientInfo,
    InfoResults,
    LayerInfo,
    LossInfo,
    MemoryUse,
    Normalisation,
    Parallelism,
    Precision,
    Report,
    RunInputs,
    RunSettings,
    TensorInfo,
)

CURVATURES = ("hessian", "ggn")
log = logging.getLogger("hesscli")


@dataclass(frozen=True)
class Request:
    """Where a run loads its problem from.

    Attributes:
        options: Command-line settings (``None`` = not given), keyed as in
            :data:`hesscli.loading.config.SETTING_TYPES`.
        cwd: Directory relative command-line paths resolve against.
        config_path: An explicit config file (else one is searched from ``cwd`` upward).
        use_config: Whether to look for a project config at all.
        trust_pickle: Allow unpickling a full model (runs code from the checkpoint).
    """

    options: Mapping[str, Any]
    cwd: Path
    config_path: Path | None = None
    use_config: bool = True
    trust_pickle: bool = False

    def settings(self) -> tuple[dict[str, Sourced], ConfigFile | None]:
        """Merge the options with checkpoint metadata, project config and defaults."""
        return resolve_settings(
            self.options, cwd=self.cwd, config_path=self.config_path, use_config=self.use_config
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _positive(setting: Sourced, option: str) -> int | None:
    value = setting.value
    if value is not None and int(value) < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}", f"pass a positive {option}")
    return None if value is None else int(value)


def _tensor_info(name: str, tensors: list[torch.Tensor]) -> TensorInfo:
    first = tensors[0]
    samples = sum(int(t.shape[0]) for t in tensors)
    return TensorInfo(name, [samples, *first.shape[1:]], _dtype_name(first.dtype))


def _data_info(dataset: Dataset, output_shape: tuple[int, ...]) -> DataInfo:
    named: dict[str, list[torch.Tensor]] = {}
    for batch in dataset.batches:
        for name, tensor in input_tensors(batch.inputs):
            named.setdefault(name, []).append(tensor)
    return DataInfo(
        source=dataset.source,
        format=dataset.format,
        samples=dataset.num_samples,
        available=dataset.available,
        batches=len(dataset.batches),
        inputs=[_tensor_info(name, tensors) for name, tensors in named.items()],
        targets=_tensor_info("targets", [b.targets for b in dataset.batches]),
        output_shape=[dataset.num_samples, *output_shape[1:]],
    )


def _checkpoint_info(problem: Problem) -> CheckpointInfo:
    raw, report = problem.checkpoint, problem.key_report
    return CheckpointInfo(
        path=str(raw.path),
        format=raw.format,
        size_bytes=raw.size_bytes,
        tensors=len(raw.tensors) if raw.module is None else len(raw.module.state_dict()),
        container=raw.container,
        prefix=report.prefix,
        ignored_entries=[*raw.ignored, *report.ignored],
        matched=report.matched,
        missing=list(report.missing),
        unexpected=list(report.unexpected),
        mismatched=[
            {"key": k, "checkpoint": list(a), "model": list(b)} for k, a, b in report.mismatched
        ],
        tied=[{"key": k, "tied_to": t} for k, t in report.tied],
        metadata=dict(raw.metadata),
        pickled_module=raw.module is not None,
    )


def _layer_info(problem: Problem, layers: list[Layer], norms: dict[str, float]) -> list[LayerInfo]:
    shapes = {name: list(p.shape) for name, p in problem.model.named_parameters()}
    return [
        LayerInfo(
            name=layer.name,
            type=layer.type,
            parameters=layer.numel,
            trainable=layer.trainable,
            shapes={p: shapes[p] for p in layer.parameters},
            grad_norm=norms.get(layer.name) if layer.trainable else None,
        )
        for layer in layers
    ]


def run_info(request: Request, *, layer_patterns: list[str]) -> Report:
    """Everything ``hesscli info`` reports: model, checkpoint, data, loss and gradient norms.

    Args:
        request: Where to load the problem from.
        layer_patterns: ``--layer`` values; empty means every layer.
    """
    start = time.perf_counter()
    prepared = prepare(request, layer_patterns=layer_patterns)
    problem, layers = prepared.problem, prepared.layers
    gradient = loss_and_gradient(
        problem.model,
        prepared.shard,
        problem.loss.fn,
        layers=list_layers(problem.model),
        micro_batch=prepared.micro_batch,
        device=prepared.device,
        dtype=prepared.dtype,
        weighting=prepared.weighting,
        group=prepared.group,
        allow_tf32=prepared.allow_tf32,
    )
    results = InfoResults(
        model_class=type(problem.model).__name__,
        layers=_layer_info(problem, layers, gradient.layer_grad_norms),
        checkpoint=_checkpoint_info(problem),
        data=_data_info(problem.dataset, problem.output_shape),
        loss=LossInfo(problem.loss.name, problem.loss.how),
        gradient=GradientInfo(
            gradient.loss, gradient.grad_norm, gradient.micro_batches, gradient.seconds
        ),
    )
    cost = Cost(seconds=time.perf_counter() - start, hvps=0, data_passes=1)
    return report_for("info", prepared, results, cost)


def report_for(
    command: str,
    prepared: Prepared,
    results: Any,
    cost: Cost,
    options: dict[str, object] | None = None,
) -> Report:
    """The envelope of DESIGN.md around a command's results."""
    problem, settings, config = prepared.problem, prepared.settings, prepared.config
    op = prepared.operators[-1] if prepared.operators else None
    plan = op.memory if op is not None else None
    weighting, group = prepared.weighting, prepared.group
    return Report(
        command=command,
        inputs=_inputs(problem, prepared.layers, config),
        settings=RunSettings(
            curvature=str(settings["curvature"].value).lower(),
            device=str(prepared.device),
            dtype=_dtype_name(prepared.dtype),
            seed=settings["seed"].value,
            micro_batch=op.micro_batch if op is not None else prepared.micro_batch,
            max_samples=settings["max_samples"].value,
            train_mode=bool(settings["train_mode"].value),
            sources={k: v.source for k, v in sorted(settings.items()) if v.value is not None},
            options=dict(options or {}),
            normalisation=Normalisation(
                weighting.kind,
                weighting.total,
                weighting.samples,
                weighting.describe(),
                prepared.normalisation_reason,
            ),
            chunk_size=op.chunk_size if op is not None else None,
            memory=None
            if plan is None
            else MemoryUse(
                plan.budget, plan.source, plan.estimate, plan.sample_bytes, plan.reserve
            ),
            distributed=Parallelism(group.world_size, group.backend, prepared.shards)
            if group.active
            else None,
            precision=Precision(
                prepared.allow_tf32,
                tf32_used(prepared.allow_tf32, prepared.device, prepared.dtype),
                matmul_precision(prepared.allow_tf32),
            ),
        ),
        results=results,
        cost=cost,
        hesscli_version=__version__,
        input_files=problem_files(problem, config),
    )


@dataclass(frozen=True)
class Prepared:
    """A loaded problem on its device, with the settings every curvature command shares.

    Attributes:
        problem: Model, checkpoint, data and loss.
        settings: Every setting with its source.
        config: The project config used, if any.
        layers: The layers selected by ``--layer`` (all by default).
        device: Where products run.
        dtype: Their precision.
        micro_batch: Samples per micro-batch (asked for; the memory plan may lower it).
        group: The distributed process group (one process by default).
        shard: This rank's samples (all of them in a single process).
        weighting: What the loss averages over, counted over every rank.
        normalisation_reason: Why that unit (``auto: ...`` or ``as requested``).
        shards: Samples per rank.
        operators: The operators built for this run, latest last (their final micro-batch,
            memory plan and route go into the report).
    """

    problem: Problem
    settings: dict[str, Sourced]
    config: ConfigFile | None
    layers: list[Layer]
    device: torch.device
    dtype: torch.dtype
    micro_batch: int
    group: Group
    shard: Dataset
    weighting: Weighting
    normalisation_reason: str
    shards: list[int]
    operators: list[CurvatureOperator]

    @property
    def allow_tf32(self) -> bool:
        """Whether TF32 may be used (``--allow-tf32``; unset means true float32)."""
        return bool(self.settings["allow_tf32"].value)


def prepare(request: Request, *, layer_patterns: list[str] | None = None) -> Prepared:
    """Load and check the problem, select layers, and move the model to its device/dtype."""
    settings, config = request.settings()
    curvature = str(settings["curvature"].value).lower()
    if curvature not in CURVATURES:
        raise ConfigError(
            f"unknown curvature {settings['curvature'].value!r}", "use hessian or ggn"
        )
    method = str(settings["hvp_method"].value).lower()
    if method not in METHODS:
        raise ConfigError(f"unknown --hvp-method {method!r}", "use auto, forward or reverse")
    micro_batch = _positive(settings["micro_batch"], "--micro-batch") or DEFAULT_MICRO_BATCH
    _positive(settings["max_samples"], "--max-samples")
    if settings["max_memory"].value is not None:
        _budget(settings["max_memory"])
    device = resolve_device(str(settings["device"].value))
    group, device = join(device, settings["distributed"].value)
    dtype = resolve_dtype(str(settings["dtype"].value), device)
    problem = load_problem(settings, trust_pickle=request.trust_pickle)
    kind, why = resolve_normalisation(
        settings["normalisation"].value, problem.loss, problem.dataset.first.targets
    )
    one_pass = not group.active and len(problem.dataset.batches) == 1
    one_pass = one_pass and problem.dataset.num_samples <= micro_batch
    found = check_additive(
        problem.model,
        problem.dataset.first,
        problem.loss,
        kind=kind,
        auto=why.startswith("auto"),
        one_pass=one_pass,
    )
    kind, why = found.kind, f"{why}; {found.note}" if found.note else why
    local = shard(problem.dataset, group) if group.active else problem.dataset
    weighting, shards = weighting_for(
        local, kind, group, shift=found.shift, single_pass=not found.additive
    )
    layers = select_layers(problem.model, layer_patterns)
    train_mode = bool(settings["train_mode"].value)
    prepare_model(problem.model, device=device, dtype=dtype, train_mode=train_mode)
    if group.active:
        log.info(
            "rank %d of %d (%s): samples per rank %s",
            group.rank,
            group.world_size,
            group.backend,
            " + ".join(map(str, shards)),
        )
    return Prepared(
        problem,
        problem.settings,  # with the loss's source when a model family chose it
        config,
        layers,
        device,
        dtype,
        micro_batch,
        group,
        local,
        weighting,
        why,
        shards,
        [],
    )


def _budget(setting: Sourced) -> int:
    value = setting.value
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ConfigError(f"max_memory must be positive, got {value}", "give bytes, or 8GiB")
        return value
    return parse_size(str(value))


def operator_for(
    prepared: Prepared, *, chunk_size: int | None = DEFAULT_CHUNK, columns: int = 1
) -> CurvatureOperator:
    """The curvature operator over the selected layers' trainable parameters, one block each.

    Its memory plan covers products of up to ``columns`` columns per data pass; the algorithm
    then reserves what it keeps (:meth:`CurvatureOperator.reserve`).
    """
    trainable = {n for n, p in prepared.problem.model.named_parameters() if p.requires_grad}
    blocks = [
        (layer.name, [p for p in layer.parameters if p in trainable])
        for layer in prepared.layers
        if any(p in trainable for p in layer.parameters)
    ]
    if not blocks:
        names = ", ".join(layer.name for layer in prepared.layers)
        raise LayerError(
            f"the selected layers ({names}) have no trainable parameters",
            "select layers whose parameters require gradients",
        )
    settings = prepared.settings
    op = CurvatureOperator(
        prepared.problem.model,
        prepared.shard,
        prepared.problem.loss.fn,
        kind=str(settings["curvature"].value).lower(),
        blocks=blocks,
        method=str(settings["hvp_method"].value).lower(),
        micro_batch=prepared.micro_batch,
        chunk_size=chunk_size,
        group=prepared.group,
        weighting=prepared.weighting,
        allow_tf32=prepared.allow_tf32,
    )
    limit = settings["max_memory"]
    if limit.value is not None:
        budget, source = _budget(limit), "--max-memory"
    else:
        share = "half" if prepared.device.type == "cpu" else "80 %"
        budget = automatic_budget(prepared.device)
        source = f"automatic: {share} of the memory of {prepared.device.type}"
    largest = max(batch.size for batch in prepared.shard.batches)
    asked = (min(op.micro_batch, largest), op.chunk_size)
    fixed = settings["micro_batch"].value is not None
    plan = op.fit_memory(budget, source, fixed_micro_batch=fixed, columns=columns)
    level = logging.INFO if (plan.micro_batch, plan.chunk_size) != asked else logging.DEBUG
    log.log(level, "memory plan: %s", plan.describe())
    prepared.operators.append(op)
    return op


def curvature_operator(
    checkpoint: str | Path,
    *,
    layers: list[str] | None = None,
    cwd: str | Path | None = None,
    use_config: bool = True,
    trust_pickle: bool = False,
    **settings: Any,
) -> CurvatureOperator:
    """The operator the command line uses, for notebooks and scripts.

    Settings are those of the command line and ``hesscli.toml`` (``model``, ``data``, ``loss``,
    ``curvature``, ``hvp_method``, ``micro_batch``, ``device``, ``dtype``, ...), with the same
    precedence: arguments, then checkpoint metadata, then the project config found from
    ``cwd``. Example::

        op = hesscli.curvature_operator("model.safetensors", data="data.pt", dtype="float64")
        hv = op.matvec(torch.randn(op.size, dtype=torch.float64))
        op.route.reason  # which differentiation route was used, and why

    Args:
        checkpoint: The checkpoint file.
        layers: ``--layer`` patterns; every layer by default.
        cwd: Directory relative paths resolve against (default: the current one).
        use_config: Whether to look for ``hesscli.toml`` / ``[tool.hesscli]``.
        trust_pickle: Allow unpickling a full model.
        **settings: Any setting of :data:`hesscli.loading.config.SETTING_TYPES`.
    """
    unknown = sorted(set(settings) - set(SETTING_TYPES))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}", f"use {', '.join(SETTING_TYPES)}"
        )
    request = Request(
        options={**settings, "checkpoint": str(checkpoint)},
        cwd=Path(cwd) if cwd is not None else Path.cwd(),
        use_config=use_config,
        trust_pickle=trust_pickle,
    )
    return operator_for(prepare(request, layer_patterns=layers))


def _inputs(problem: Problem, layers: list[Layer], config: ConfigFile | None) -> RunInputs:
    params = list(problem.model.parameters())
    return RunInputs(
        checkpoint=str(problem.checkpoint.path),
        model=problem.model_label,
        data=problem.dataset.source,
        loss=problem.loss.name,
        samples=problem.dataset.num_samples,  # every rank's, before sharding
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        layers=[layer.name for layer in layers],
        config=str(config.path) if config is not None else None,
    )


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
        inputs=_inputs(problem, list_layers(problem.model), config),
        settings=RunSettings(
            curvature=str(settings["curvature"].value).lower(),
            device="cpu",  # convert computes nothing: the weights are copied as read
            dtype=_dtype_name(weights.dtype) if weights is not None else "float32",
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
