"""``hesscli info``: model, checkpoint, data and loss summary, with loss and gradient norm."""

from __future__ import annotations

from hesscli.cli import options as opt
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.cli.output import emit, stderr_console
from hesscli.cli.render.info_table import info_renderable
from hesscli.runs.files import refuse_to_overwrite
from hesscli.runs.info import run_info


def info(
    checkpoint: opt.Checkpoint = None,
    model: opt.Model = None,
    model_kwargs: opt.ModelKwargs = None,
    data: opt.Data = None,
    text_field: TextField = None,
    label_field: LabelField = None,
    max_length: MaxLength = None,
    loss: opt.Loss = None,
    output_key: opt.OutputKey = None,
    max_samples: opt.MaxSamples = None,
    micro_batch: opt.MicroBatch = None,
    layer: opt.Layers = None,
    curvature: opt.Curvature = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    allow_tf32: opt.AllowTf32 = None,
    seed: opt.Seed = None,
    train_mode: opt.TrainMode = None,
    distributed: opt.Distributed = None,
    max_memory: opt.MaxMemory = None,
    normalisation: opt.Normalisation = None,
    trust_pickle: opt.TrustPickle = False,
    strict: opt.Strict = None,
    checkpoint_prefix: opt.CheckpointPrefix = None,
    config: opt.Config = None,
    no_config: opt.NoConfig = False,
    json: opt.Json = False,
    output: opt.Output = None,
) -> None:
    """Summarise a checkpoint: layers, key match, data, loss, and the gradient at it.

    A sanity check before any curvature run: one forward/backward pass, no Hessian products.
    """
    refuse_to_overwrite(output, [checkpoint, data, model, config])
    request = opt.request_from(locals())
    with stderr_console().status("loading and running one forward/backward pass"):
        report = run_info(request, layer_patterns=layer or [])
    refuse_to_overwrite(output, report.input_files)
    emit(report, as_json=json, output=output, table=info_renderable)
