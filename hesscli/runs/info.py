"""``hesscli info``: model, checkpoint, data, loss and gradient norms; no curvature.

The summary a user reads before spending products: what was loaded, how the checkpoint's keys
matched the model, the data's shapes, and one loss and gradient pass as a sanity check.
"""

from __future__ import annotations

import time

import torch

from hesscli.batches import Dataset, input_tensors
from hesscli.engine.gradient import loss_and_gradient
from hesscli.engine.params import Layer, list_layers
from hesscli.loading.problem import Problem
from hesscli.results import (
    CheckpointInfo,
    Cost,
    DataInfo,
    GradientInfo,
    InfoResults,
    LayerInfo,
    LossInfo,
    Report,
    TensorInfo,
)
from hesscli.runs.envelope import dtype_name, report_for
from hesscli.runs.prepare import Request, prepare


def _tensor_info(name: str, tensors: list[torch.Tensor]) -> TensorInfo:
    first = tensors[0]
    samples = sum(int(t.shape[0]) for t in tensors)
    return TensorInfo(name, [samples, *first.shape[1:]], dtype_name(first.dtype))


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
