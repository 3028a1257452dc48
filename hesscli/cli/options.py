"""Options shared by the commands, declared once (names are a public contract).

Options with a fixed set of values are typed as ``Literal`` choices, so that help lists them
(``<hessian|ggn>``) and typer refuses anything else; matching ignores case, as it always did.
Numeric options go through :func:`number`, one validator that refuses NaN and infinities
(Python's ``float`` parses ``nan``, ``inf`` and ``1e999``) and values out of range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
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


# -- density, report, check and compare --------------------------------------------------------
_ESTIMATION = "Estimation"


def number(
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
) -> Callable[[float | None], float | None]:
    """The one validator of float options: finite, and within the bounds given.

    Python's ``float`` accepts ``nan``, ``inf``, ``-infinity`` and ``1e999``; none of them is a
    tolerance, a threshold or a scale. ``nan`` in particular passes every ``min=`` range check,
    because every comparison with it is false.

    Args:
        above: The value must be greater than this.
        at_least: The value must be at least this.
        below: The value must be less than this.

    Returns:
        A typer callback returning the value unchanged, or raising ``typer.BadParameter``.
    """

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number")
        if above is not None and not value > above:
            raise typer.BadParameter(f"{value:g} is not > {above:g}")
        if at_least is not None and not value >= at_least:
            raise typer.BadParameter(f"{value:g} is not >= {at_least:g}")
        if below is not None and not value < below:
            raise typer.BadParameter(f"{value:g} is not < {below:g}")
        return value

    return check


#: Options that divide or scale (``--sigma``, ``--lr``): finite and > 0.
positive_float = number(above=0.0)
#: Thresholds (``--max-eigenvalue``...): any finite number.
finite_float = number()
#: Relative tolerances of an eigenvalue (``--tol``): in (0, 1).
relative_tolerance = number(above=0.0, below=1.0)


Probes = Annotated[
    int | None,
    typer.Option(
        "--probes",
        min=1,
        help="Random probe vectors of the density (stochastic Lanczos quadrature); more "
        "probes shrink its standard error and that of the probes' trace. Default: 8, or 4 "
        "from 1M parameters.",
        rich_help_panel=_ESTIMATION,
    ),
]
Steps = Annotated[
    int | None,
    typer.Option(
        "--steps",
        min=1,
        help="Lanczos steps per probe (quadrature nodes per probe, one data pass each). "
        "Default: 80, or 40 from 1M parameters.",
        rich_help_panel=_ESTIMATION,
    ),
]
Points = Annotated[
    int,
    typer.Option(
        "--points", min=2, help="Grid points of the smoothed density.", rich_help_panel=_ESTIMATION
    ),
]
Sigma = Annotated[
    float | None,
    typer.Option(
        "--sigma",
        callback=positive_float,
        help="Width of the Gaussian that smooths the quadrature, in units of λ. Default: "
        "automatic (a fraction of the spectrum's span).",
        rich_help_panel=_ESTIMATION,
    ),
]
ReportTol = Annotated[
    float | None,
    typer.Option(
        "--tol",
        callback=relative_tolerance,
        help="Eigenvalue tolerance: stop when every value's error (‖r‖²/gap, at most the "
        "residual ‖Cy − λy‖) ≤ TOL × ‖C‖. Default: 1e-4 in float32, 1e-8 in float64.",
        rich_help_panel=_ESTIMATION,
    ),
]
ReportMaxSteps = Annotated[
    int | None,
    typer.Option(
        "--max-steps",
        min=1,
        help="Lanczos steps at most for the eigenvalues (default 300); unconverged values "
        "are flagged.",
        rich_help_panel=_ESTIMATION,
    ),
]
DiagProducts = Annotated[
    int | None,
    typer.Option(
        "--diag-products",
        min=1,
        help="Products for the Diag++ estimate of a layer's diagonal when the layer has no "
        "fast exact diagonal (default 300; 150 from 1M parameters on).",
        rich_help_panel=_ESTIMATION,
    ),
]
LearningRate = Annotated[
    float | None,
    typer.Option(
        "--lr",
        callback=positive_float,
        help="Learning rate of the training run: flags 'sharp' when λmax > 2/LR (gradient "
        "descent with this step size is unstable along the top eigenvector).",
        rich_help_panel=_ESTIMATION,
    ),
]
DensityPlot = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Also draw the density to FILE (format from its suffix: .png, .pdf, .svg; "
        "needs matplotlib).",
        show_default=False,
        rich_help_panel=_OUTPUT,
    ),
]
