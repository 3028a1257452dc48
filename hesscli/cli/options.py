"""Options every run command shares, declared once (names are a public contract).

Options with a fixed set of values are typed as ``Literal`` choices, so that help lists them
(``<hessian|ggn>``) and typer refuses anything else; matching ignores case, as it always did.
The estimating commands' options and the one validator of float options (:func:`number`) are
in :mod:`hesscli.cli.estimation_options`; :mod:`hesscli.cli.run_options` splices these into
every command's signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hesscli.runs.files import refuse_special_inputs
from hesscli.runs.prepare import SETTING_TYPES, Request

_INPUT = "Inputs"
_COMPUTE = "Computation"
_OUTPUT = "Output"

Checkpoint = Annotated[
    str | None,
    typer.Argument(
        metavar="CHECKPOINT",
        help="Checkpoint file (.safetensors, .pt, .pth, .bin), or a Hugging Face "
        "save_pretrained folder (its config.json names the model). Default: 'checkpoint' in "
        "the project config.",
        show_default=False,
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        metavar="SPEC",
        help="Model definition: path/to/file.py:Name or package.module:Name (an nn.Module "
        "class or a function returning one).",
        rich_help_panel=_INPUT,
    ),
]
ModelKwargs = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        metavar="JSON",
        help="Keyword arguments for the model, as a JSON object.",
        rich_help_panel=_INPUT,
    ),
]
Data = Annotated[
    str | None,
    typer.Option(
        "--data",
        metavar="FILE|SPEC",
        help="Data: a .pt, .safetensors or .npz file holding inputs and targets, or a "
        "module:function factory returning them.",
        rich_help_panel=_INPUT,
    ),
]
Loss = Annotated[
    str | None,
    typer.Option(
        "--loss",
        metavar="NAME|SPEC",
        help="cross_entropy, mse, nll, bce_with_logits, huber, token_cross_entropy, "
        "next_token_cross_entropy, or module:function. Default: the model family's for a "
        "Hugging Face folder, else inferred from the targets (integer labels: cross_entropy, "
        "floats: mse).",
        rich_help_panel=_INPUT,
    ),
]
OutputKey = Annotated[
    str | None,
    typer.Option(
        "--output-key",
        metavar="NAME",
        help="The model output the loss sees when forward() returns a dict, a ModelOutput or "
        "a tuple (a key, or an index of the tuple). Default: 'logits' for the built-in "
        "losses (a tuple's first element); a module:function loss gets the whole output.",
        rich_help_panel=_INPUT,
    ),
]
MaxSamples = Annotated[
    int | None,
    typer.Option(
        "--max-samples", min=1, help="Use only the first N samples.", rich_help_panel=_INPUT
    ),
]
MicroBatch = Annotated[
    int | None,
    typer.Option(
        "--micro-batch",
        min=1,
        help="Samples per forward pass (results do not depend on it). Default: 512.",
        rich_help_panel=_COMPUTE,
    ),
]
Layers = Annotated[
    list[str] | None,
    typer.Option(
        "--layer",
        metavar="NAME",
        help="Layer (module), parameter name or glob such as 'encoder.*'; repeatable.",
        rich_help_panel=_INPUT,
    ),
]
Curvature = Annotated[
    Literal["hessian", "ggn"] | None,
    typer.Option(
        "--curvature",
        case_sensitive=False,
        help="hessian (default) or ggn (generalised Gauss-Newton).",
        rich_help_panel=_COMPUTE,
    ),
]
HvpMethod = Annotated[
    Literal["auto", "forward", "reverse", "fd"] | None,
    typer.Option(
        "--hvp-method",
        case_sensitive=False,
        help="auto (default: check both routes on the first micro-batch, keep the faster "
        "correct one; finite differences when neither runs), forward (forward-over-reverse), "
        "reverse (double backward) or fd (finite differences of the gradient, with their "
        "error estimated).",
        rich_help_panel=_COMPUTE,
    ),
]
Device = Annotated[
    str | None,
    typer.Option(
        "--device",
        metavar="auto|cpu|cuda[:N]",
        help="auto (default: GPU when there is one), cpu, cuda, cuda:N or mps.",
        rich_help_panel=_COMPUTE,
    ),
]
Dtype = Annotated[
    Literal["float32", "float64"] | None,
    typer.Option(
        "--dtype",
        case_sensitive=False,
        help="float32 (default) or float64.",
        rich_help_panel=_COMPUTE,
    ),
]
AllowTf32 = Annotated[
    bool | None,
    typer.Option(
        "--allow-tf32/--no-tf32",
        help="Let CUDA matmuls and cuDNN convolutions use TF32 (faster on Ampere or later GPUs, "
        "about 1e-3 relative error per operation). Default: true float32, TF32 off; the JSON "
        "says which (settings.precision).",
        show_default=False,
        rich_help_panel=_COMPUTE,
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        "--seed", help="Seed for every random draw (default 0).", rich_help_panel=_COMPUTE
    ),
]
TrainMode = Annotated[
    bool | None,
    typer.Option(
        "--train-mode/--eval-mode",
        help="Evaluate the model in train() mode (dropout on, BatchNorm batch statistics). "
        "Default: eval mode.",
        show_default=False,
        rich_help_panel=_COMPUTE,
    ),
]
Distributed = Annotated[
    bool | None,
    typer.Option(
        "--distributed/--no-distributed",
        help="Shard the data over the processes of a torchrun launch and sum the products "
        "across them (gloo on the CPU, nccl on CUDA). Default: on when torchrun started "
        "the command.",
        show_default=False,
        rich_help_panel=_COMPUTE,
    ),
]
MaxMemory = Annotated[
    str | None,
    typer.Option(
        "--max-memory",
        metavar="SIZE",
        help="Memory the products may use on the device (8GiB, 8G, 8GB, 500MB): picks the "
        "micro-batch and vmap chunk sizes. Default: half the free memory on the CPU, 80% "
        "on a GPU. Running out anyway retries with smaller sizes.",
        rich_help_panel=_COMPUTE,
    ),
]
Normalisation = Annotated[
    Literal["auto", "samples", "tokens"] | None,
    typer.Option(
        "--normalisation",
        case_sensitive=False,
        help="What the loss is a mean over: samples, tokens (targets other than -100, for "
        "token-level sequence losses), or auto (default: tokens when the targets hold "
        "-100 padding or one class label per position).",
        rich_help_panel=_COMPUTE,
    ),
]
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow a checkpoint holding a full pickled model. Unpickling runs arbitrary code "
        "from the file: only use it on files you trust.",
        rich_help_panel=_INPUT,
    ),
]
Strict = Annotated[
    bool | None,
    typer.Option(
        "--strict/--no-strict",
        help="Refuse checkpoint tensors the model has no place for (default). --no-strict "
        "ignores them (a loss buffer, a teacher) and lists them; missing or mis-shaped "
        "weights are refused either way.",
        show_default=False,
        rich_help_panel=_INPUT,
    ),
]
CheckpointPrefix = Annotated[
    str | None,
    typer.Option(
        "--checkpoint-prefix",
        help="Load only the checkpoint keys under this prefix (e.g. 'student'), with the "
        "prefix removed; the other keys are ignored and listed.",
        rich_help_panel=_INPUT,
    ),
]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Project config (hesscli.toml, or pyproject.toml with \\[tool.hesscli]). Default: "
        "the first found from the current directory upward.",
        rich_help_panel=_INPUT,
    ),
]
NoConfig = Annotated[
    bool,
    typer.Option("--no-config", help="Ignore project config files.", rich_help_panel=_INPUT),
]
Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Print one JSON document instead of tables.", rich_help_panel=_OUTPUT
    ),
]
Output = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Also write the result to FILE (JSON if --json or FILE ends in .json, else text).",
        rich_help_panel=_OUTPUT,
    ),
]


def request_from(values: Mapping[str, Any]) -> Request:
    """The load request of a command, from its parameters (pass the command's ``locals()``).

    Parameters named like settings (``model``, ``data``, ``seed``...) become options;
    ``config``, ``no_config`` and ``trust_pickle`` say how to load. The input files named on
    the command line are checked first to be regular files (a FIFO would block the read).
    """
    named = ("checkpoint", "model", "data", "loss", "config", "baseline")
    refuse_special_inputs([*(values.get(key) for key in named), *values.get("checkpoints", [])])
    return Request(
        options={key: values[key] for key in SETTING_TYPES if key in values},
        cwd=Path.cwd(),
        config_path=values.get("config"),
        use_config=not values.get("no_config", False),
        trust_pickle=bool(values.get("trust_pickle", False)),
    )
