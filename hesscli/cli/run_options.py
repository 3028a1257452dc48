"""The options every run command shares, spliced into each command's signature once.

typer reads a command's options from its signature. Eight commands take the same 29 options
(checkpoint, model, data, loss, computation, config and output) in the same order, and
``convert`` a part of them; rather than list them nine times, a command declares one parameter
``run: RunOptions`` and :func:`with_run_options` puts the shared options (less those it leaves
out) in its place, so ``--help`` lists them exactly as if they were written out. The command
then reads them from ``run``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from hesscli.cli import options as opt
from hesscli.cli.data_options import LabelField, MaxLength, TextField
from hesscli.runs.prepare import Request
from hesscli.runs.report import ReportSettings

Command = TypeVar("Command", bound=Callable[..., Any])

#: The parameter of a command that :func:`with_run_options` replaces by the shared options.
PLACE = "run"


def _shared(
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
    hvp_method: opt.HvpMethod = None,
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
    """The shared options, in the order every command's help lists them (never called)."""


#: The shared options as signature parameters, annotations resolved.
SHARED = inspect.signature(_shared, eval_str=True).parameters
#: The options that only a run over the data uses (what it selects and how it computes);
#: ``convert``, which loads and checks but computes nothing, leaves them out.
RUN_ONLY = (
    "max_samples",
    "micro_batch",
    "layer",
    "curvature",
    "hvp_method",
    "device",
    "dtype",
    "allow_tf32",
    "seed",
    "train_mode",
    "distributed",
    "max_memory",
    "normalisation",
)


@dataclass(frozen=True)
class RunOptions:
    """The shared options' values of one invocation, by parameter name."""

    values: Mapping[str, Any]

    @property
    def layers(self) -> list[str]:
        """The ``--layer`` patterns (none: every layer)."""
        return self.values.get("layer") or []

    @property
    def json(self) -> bool:
        """``--json``: one JSON document instead of tables."""
        return bool(self.values.get("json"))

    @property
    def output(self) -> Path | None:
        """``--output``: the file the result is also written to."""
        return self.values.get("output")

    def named_inputs(self, *more: str | Path | None) -> list[str | Path | None]:
        """The input files named on the command line (``--output`` may be none of them)."""
        named = [self.values.get(key) for key in ("checkpoint", "data", "model", "config")]
        return [*named, *more]

    def request(self, own: Mapping[str, Any]) -> Request:
        """The load request, from these options and the command's own (its ``locals()``)."""
        return opt.request_from({**self.values, **own})


def report_settings(own: Mapping[str, Any]) -> ReportSettings:
    """What ``report``, ``check`` and ``compare`` compute, from the command's own ``locals()``.

    Each takes the settings it declares as options (``check`` has no density grid); the rest
    keep :class:`~hesscli.runs.report.ReportSettings`' defaults.
    """
    names = {f.name for f in fields(ReportSettings)}
    return ReportSettings(**{key: value for key, value in own.items() if key in names})


def with_run_options(*, leave_out: Sequence[str] = ()) -> Callable[[Command], Command]:
    """Replace a command's ``run`` parameter by the shared options (except ``leave_out``).

    The command keeps its name, docstring and own parameters; typer sees the shared options
    where ``run`` stood, and the command receives their values as one :class:`RunOptions`.
    """
    unknown = set(leave_out) - set(SHARED)
    if unknown:
        raise ValueError(f"not shared options: {', '.join(sorted(unknown))}")
    shared = [p for name, p in SHARED.items() if name not in leave_out]

    def splice(command: Command) -> Command:
        own = inspect.signature(command, eval_str=True).parameters
        if PLACE not in own:
            raise TypeError(f"{command.__name__} has no '{PLACE}' parameter to replace")
        spliced = [q for p in own.values() for q in (shared if p.name == PLACE else [p])]

        @functools.wraps(command)
        def invoke(**values: Any) -> Any:
            run = RunOptions({p.name: values.pop(p.name) for p in shared})
            return command(**{PLACE: run}, **values)

        invoke.__signature__ = inspect.Signature(spliced)  # type: ignore[attr-defined]
        return invoke  # type: ignore[return-value]

    return splice
