"""What every table shares: number formats, the run's heading and the footer under the tables.

The heading and the footer are plain text outside the tables, so they wrap at spaces at any
width and never cut a number. The footer names the loss that was used and where it came from
(given with ``--loss``, a config file, the checkpoint's metadata, or inferred from the
targets), since every curvature number is a curvature of that loss.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text

from hesscli.results import Cost, Engine, Report, RunSettings

#: The row of the selected layers taken together.
WHOLE = "(all selected)"
#: ``settings.sources`` values (hesscli.loading.config) and how the loss line words them.
LOSS_SOURCES = {
    "option": "given with --loss",
    "checkpoint metadata": "from the checkpoint's metadata",
    "default": "inferred from the targets",
    "model family": "the model family's loss",
}


def general(value: float | None) -> str:
    """A value with 4 significant digits, ``-`` when there is none."""
    return "-" if value is None else f"{value:.4g}"


def short(value: float) -> str:
    """A value with 3 significant digits (statistics, axis ends)."""
    return f"{value:.3g}"


def sci(value: float) -> str:
    """A small positive quantity (residual, standard error) in scientific notation."""
    return f"{value:.1e}"


def title(report: Report, what: str) -> str:
    """The run in one sentence: what, of which curvature, model, samples, dtype and device."""
    inputs, settings = report.inputs, report.settings
    return (
        f"{what} of the {settings.curvature} — {inputs.model}, {inputs.samples:,} samples, "
        f"{inputs.trainable_parameters:,} trainable parameters, {settings.dtype} on "
        f"{settings.device}"
    )


def heading(report: Report, what: str) -> Text:
    """:func:`title` as a line of its own above the tables (it wraps at spaces)."""
    return Text(title(report, what), style="italic")


def _where(source: str) -> str:
    """A config file's path relative to the working directory when it lies below it."""
    path = Path(source)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return source


def loss_line(report: Report) -> str:
    """``loss: NAME (why), mean over N samples``: the loss every number is a curvature of."""
    source = report.settings.sources.get("loss", "default")
    why = LOSS_SOURCES.get(source) or f"from {_where(source)}"
    line = f"loss: {report.inputs.loss} ({why})"
    if report.settings.normalisation is not None:
        line += f", {report.settings.normalisation.description}"
    return line


def run_lines(settings: RunSettings) -> list[str]:
    """How the run computed across processes (the loss's line is :func:`loss_line`)."""
    if settings.distributed is None:
        return []
    shards = " + ".join(f"{n:,}" for n in settings.distributed.samples_per_rank)
    return [
        f"processes: {settings.distributed.world_size} ({settings.distributed.backend}), "
        f"samples per rank {shards}"
    ]


def _extra_products(cost: Cost) -> str:
    """`` (+2 route-check products, 52 layer-output-space products)``, or nothing."""
    extras = [
        f"+{count:,} {what} products"
        for count, what in (
            (cost.check_hvps, "route-check"),
            (cost.output_space_products, "layer-output-space"),
        )
        if count
    ]
    return f" ({', '.join(extras)})" if extras else ""


def footer(report: Report, engine: Engine, extra: str = "") -> Text:
    """Notes on the columns (``extra``), then the loss, the cost, the route and the processes."""
    cost = report.cost
    lines = [
        *([extra] if extra else []),
        loss_line(report),
        f"cost: {cost.seconds:.2f} s, {cost.hvps:,} curvature-vector products over all samples "
        f"in {cost.data_passes:,} data passes" + _extra_products(cost),
        f"route: {engine.route} — {engine.reason}",
        *([f"attention: {engine.attention}"] if engine.attention else []),
        *run_lines(report.settings),
    ]
    return Text("\n".join(lines), style="dim")
