"""The envelope of DESIGN.md around a command's results: inputs, settings, results, cost.

Every command's JSON has the same core (``schema_version``, ``command``, ``inputs``,
``settings``, ``results``, ``cost``); :func:`report_for` builds it from a prepared problem and
the operators the run built (their final micro-batch, memory plan and route), and
:func:`run_inputs` the ``inputs`` part that ``convert``, which prepares nothing, shares.
"""

from __future__ import annotations

from typing import Any

import torch

from hesscli import __version__
from hesscli.engine.params import Layer
from hesscli.engine.precision import matmul_precision, tf32_used
from hesscli.loading.config import ConfigFile
from hesscli.loading.problem import Problem, problem_files
from hesscli.results import (
    Cost,
    MemoryUse,
    Normalisation,
    Parallelism,
    Precision,
    Report,
    RunInputs,
    RunSettings,
)
from hesscli.runs.prepare import Prepared


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float64`` → ``float64``, as the JSON names dtypes."""
    return str(dtype).removeprefix("torch.")


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
        inputs=run_inputs(problem, prepared.layers, config),
        settings=RunSettings(
            curvature=str(settings["curvature"].value).lower(),
            device=str(prepared.device),
            dtype=dtype_name(prepared.dtype),
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


def run_inputs(problem: Problem, layers: list[Layer], config: ConfigFile | None) -> RunInputs:
    """The envelope's ``inputs``: files, samples, parameters and layers of the run."""
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
