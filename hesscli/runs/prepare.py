"""Request → problem → operator: what every command does before its algorithm runs.

:func:`prepare` loads and checks the problem (model, checkpoint, data, loss), selects layers and
moves the model to its device and dtype; :func:`operator_for` builds the curvature operator
inside the memory plan (:mod:`hesscli.runs.envelope` then wraps a command's results in the JSON
envelope of DESIGN.md). :func:`curvature_operator` is the same path for notebooks and scripts
(``hesscli.curvature_operator``). No printing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hesscli.batches import Dataset
from hesscli.engine.budget import DEFAULT_CHUNK
from hesscli.engine.device import resolve_device, resolve_dtype
from hesscli.engine.device_memory import automatic_budget, parse_size
from hesscli.engine.distributed import Group, join, shard, weighting_for
from hesscli.engine.functional import DEFAULT_MICRO_BATCH, prepare_model
from hesscli.engine.operator import CurvatureOperator
from hesscli.engine.params import Layer, select_layers
from hesscli.engine.routes import METHODS
from hesscli.engine.weighting import Weighting
from hesscli.errors import ConfigError, LayerError
from hesscli.loading.additivity import check_additive
from hesscli.loading.config import SETTING_TYPES, ConfigFile, Sourced
from hesscli.loading.losses import resolve_normalisation
from hesscli.loading.problem import Problem, load_problem, resolve_settings

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


def _positive(setting: Sourced, option: str) -> int | None:
    value = setting.value
    if value is not None and int(value) < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}", f"pass a positive {option}")
    return None if value is None else int(value)


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
