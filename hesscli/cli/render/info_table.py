"""``hesscli info`` as Rich tables: model layers, checkpoint match, data and loss, settings."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.filesize import decimal
from rich.text import Text

from hesscli.cli.render.fit import PLAIN_STYLE, Column, FitTable
from hesscli.results import Report


def _shape(shape: list[int]) -> str:
    """``(92,32)``: no space inside, so a narrow table never wraps a shape between its numbers."""
    return "(" + ",".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _path(text: str) -> str:
    """A path relative to the working directory when it lies below it."""
    path = Path(text)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return text


KEYVALUE_COLUMNS = [Column("", justify="left", style="bold"), Column("", "text", "left")]


def _keyvalue(title: str, rows: list[tuple[str, str]]) -> FitTable:
    return FitTable(KEYVALUE_COLUMNS, rows, title=title, styles=[PLAIN_STYLE])


LAYER_COLUMNS = [
    Column("layer", "name", "left"),
    Column("type", justify="left", drop=3),
    Column("parameters"),
    Column("trainable", drop=2),
    Column("shapes", "text", "left", drop=1),
    Column("grad norm"),
]


def _layers(report: Report) -> FitTable:
    results = report.results
    rows = []
    for layer in results.layers:
        trainable = "all" if layer.trainable == layer.parameters else f"{layer.trainable:,}"
        shapes = ", ".join(
            f"{name.rsplit('.', 1)[-1]} {_shape(shape)}" for name, shape in layer.shapes.items()
        )
        grad = "-" if layer.grad_norm is None else f"{layer.grad_norm:.4g}"
        rows.append(
            [layer.name, layer.type, f"{layer.parameters:,}", trainable or "none", shapes, grad]
        )
    title = (
        f"Model {results.model_class}: {report.inputs.parameters:,} parameters "
        f"({report.inputs.trainable_parameters:,} trainable)"
    )
    return FitTable(LAYER_COLUMNS, rows, title=title, stack_single_row=False)


def _checkpoint(report: Report) -> FitTable:
    info = report.results.checkpoint
    match = f"{info.matched} keys matched"
    if info.tied:
        match += ", tied: " + ", ".join(f"{t['key']} = {t['tied_to']}" for t in info.tied)
    rows = [
        ("file", _path(info.path)),
        ("format", f"{info.format}, {decimal(info.size_bytes)}, {info.tensors} tensors"),
        ("keys", match),
    ]
    folder = info.format.startswith("huggingface")
    if folder:  # built from its config.json: say what was built, and from which files
        rows.append(("built", report.inputs.model))
    if info.container:
        rows.append(
            ("weights from", info.container) if folder else ("nested under", repr(info.container))
        )
    if info.prefix:
        rows.append(("prefix", info.prefix))
    if info.ignored_entries:
        rows.append(("ignored", ", ".join(info.ignored_entries)))
    if info.pickled_module:
        rows.append(("pickled model", "yes (loaded with --trust-pickle)"))
    if info.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))))
    return _keyvalue("Checkpoint", rows)


def _data(report: Report) -> FitTable:
    data, results = report.results.data, report.results
    samples = f"{data.samples:,}"
    if data.available != data.samples:
        samples += f" of {data.available:,} (--max-samples)"
    inputs = ", ".join(f"{t.name} {_shape(t.shape)} {t.dtype}" for t in data.inputs)
    targets = data.targets
    rows = [
        ("source", f"{_path(data.source)} ({data.format})"),
        ("samples", f"{samples} in {data.batches} batch(es)"),
        ("inputs", inputs),
        ("targets", f"{_shape(targets.shape)} {targets.dtype}"),
        ("outputs", _shape(data.output_shape)),
        ("loss", f"{results.loss.name} ({_path(results.loss.how)})"),
        *(
            [("normalised", f"{norm.description} ({norm.reason})")]
            if (norm := report.settings.normalisation) is not None
            else []
        ),
    ]
    return _keyvalue("Data and loss", rows)


def _gradient(report: Report) -> FitTable:
    grad, settings = report.results.gradient, report.settings
    mode = "train" if settings.train_mode else "eval"
    rows = [
        ("loss", f"{grad.loss:.6g}"),
        ("gradient norm", f"{grad.grad_norm:.6g}"),
        (
            "computed",
            f"{settings.device}, {settings.dtype}, {mode} mode, {grad.micro_batches} "
            f"micro-batch(es) of ≤ {settings.micro_batch}, {grad.seconds:.3f} s",
        ),
    ]
    return _keyvalue("At the checkpoint", rows)


def _sources(report: Report) -> Text:
    given = {k: v for k, v in report.settings.sources.items() if v != "default"}
    text = ", ".join(f"{k} from {_path(v)}" for k, v in sorted(given.items()))
    return Text(f"settings: {text}" if text else "settings: all defaults", style="dim")


def _cost(report: Report) -> Text:
    cost = report.cost
    return Text(
        f"cost: {cost.seconds:.2f} s, {cost.data_passes} data pass(es), "
        f"{cost.hvps} Hessian-vector products"
    )


def info_renderable(report: Report) -> RenderableType:
    """Everything ``hesscli info`` shows, as one Rich renderable."""
    blank = Text("")
    parts: list[RenderableType] = [
        _layers(report),
        blank,
        _checkpoint(report),
        blank,
        _data(report),
        blank,
        _gradient(report),
        blank,
        _sources(report),
        _cost(report),
    ]
    return Group(*parts)
