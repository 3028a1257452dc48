"""Tables read everywhere: at 80 columns, at 120 with Hugging Face-style names, through a pipe.

A number is never wrapped or cut. The tests run the real commands on a small model whose
layers carry BERT-style names (``model.bert.encoder.layer.10.attention.self.query``), take
the numbers each table should show from the JSON of the same run (same seed, so the same
numbers), format them as the table does, and find each one whole on a line: not split over
two lines, not cut to ``1.…``. A column may be left out for width only when the table says so
(``not shown at N columns: ...``) and only if it is not one of the command's essential
columns. Every layer's name must be readable: whole, or shortened in the middle to a form
that fits that layer and no other.

The stderr side: progress bars are drawn only on a terminal, lines printed while they run
go above them, and a pipe gets no stray blank line.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file
from typer.testing import CliRunner, Result

from hesscli.cli.app import app
from hesscli.cli.output import configure_logging, stderr_console
from hesscli.cli.progress import progress_bars
from hesscli.cli.render import check_tables, density_tables, report_tables
from hesscli.cli.render.curvature_tables import spectrum_renderable
from hesscli.cli.render.fit import Column, FitTable, shorten_names
from hesscli.results import Eigenvalue, Report, SpectrumResults
from tests import test_schemas as ts

# -- a model with Hugging Face-style names -----------------------------------------------------
MODEL_SOURCE = '''
import torch
from torch import nn


class Block(nn.Module):
    """BERT's layout of names: attention.self.query/key/value and attention.output.dense."""

    def __init__(self, width):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(width, width))
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(width, width)

    def forward(self, h):
        s = self.attention.self
        mixed = torch.tanh(s.query(h)) * torch.sigmoid(s.key(h)) + s.value(h)
        return h + self.attention.output.dense(torch.tanh(mixed))


class Deep(nn.Module):
    def __init__(self, width=4, classes=3, layers=12):
        super().__init__()
        self.model = nn.Module()
        self.model.bert = nn.Module()
        self.model.bert.encoder = nn.Module()
        self.model.bert.encoder.layer = nn.ModuleList(Block(width) for _ in range(layers))
        self.classifier = nn.Linear(width, classes)

    def forward(self, x):
        for block in self.model.bert.encoder.layer:
            x = block(x)
        return self.classifier(x)
'''
#: Layers 1, 10 and 11: names that differ only in the middle ("layer.1." vs "layer.11.").
SELECT = ("--layer", "model.bert.encoder.layer.1*", "--seed", "0")
FAST = ("--probes", "2", "--steps", "12")
#: Every command with the options that make it quick on the model above.
COMMANDS: dict[str, tuple[str, ...]] = {
    "spectrum": ("model.safetensors", *SELECT, "--per-layer", "--top-k", "3"),
    "trace": ("model.safetensors", *SELECT),
    "diag": ("model.safetensors", *SELECT),
    "density": ("model.safetensors", *SELECT, *FAST, "--per-layer"),
    "report": ("model.safetensors", *SELECT, *FAST),
    "check": ("model.safetensors", *SELECT, *FAST, "--max-eigenvalue", "1e6", "--max-trace", "1e6"),
    "compare": ("model.safetensors", "other.safetensors", *SELECT, *FAST),
    "info": ("model.safetensors",),
}
#: Columns that may never be left out for width.
ESSENTIAL = {
    "spectrum": {"λmax", "λmin", "converged"},
    "trace": {"trace", "± stderr"},
    "diag": {"mean", "min", "max", "neg", "exact"},
    "density": {"negative mass"},
    "report": {"trace ± stderr", "λmax", "λmin"},
    "check": {"limit", "measured", "margin", "result"},
    "compare": {"λmax", "λmin", "trace"},
    "info": {"parameters", "grad norm"},
}


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the model, two checkpoints, 16 samples and a hesscli.toml."""
    folder = tmp_path_factory.mktemp("bert_like")
    (folder / "model.py").write_text(MODEL_SOURCE)
    # Loaded from its path: an ``import model`` would return whatever module another test left
    # under that name in sys.modules (it did, depending on the order the tests ran in).
    spec = importlib.util.spec_from_file_location("bert_like_model", folder / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.Deep()
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors"
    )
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, folder / "other.safetensors"
    )
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 4, generator=generator)
    torch.save({"inputs": inputs, "targets": torch.arange(16) % 3}, folder / "data.pt")
    (folder / "hesscli.toml").write_text(
        'model = "model.py:Deep"\ndata = "data.pt"\nloss = "cross_entropy"\n'
    )
    return folder


@pytest.fixture(scope="module")
def runs(bert: Path, one_thread: None) -> Callable[[str, int | None], Result]:
    """``hesscli COMMAND ...`` in the model's folder at a width (``None``: ``--json``), cached."""
    cache: dict[tuple[str, int | None], Result] = {}

    def run(command: str, width: int | None) -> Result:
        if (command, width) not in cache:
            args = [command, *COMMANDS[command], *(["--json"] if width is None else [])]
            env = {"COLUMNS": str(width or 80), "NO_COLOR": "1"}
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(bert)
                cache[command, width] = CliRunner().invoke(app, args, env=env)
        return cache[command, width]

    return run


# -- what a table must show --------------------------------------------------------------------
def _g(value: float) -> str:
    return f"{value:.4g}"


def _s(value: float) -> str:
    return f"{value:.3g}"


def _e(value: float) -> str:
    return f"{value:.1e}"


def _pct(value: float) -> str:
    return f"{value * 100:.3g}%"


def _expected(command: str, document: dict[str, Any]) -> list[tuple[str, str]]:
    """``(column, text)`` for the numbers the table of ``command`` shows, from its JSON."""
    r, out = document["results"], []
    if command == "spectrum":
        for row in [r, *r["layers"].values()]:
            for side, column in (("top", "λmax"), ("bottom", "λmin")):
                if row[side]:
                    out += [(column, _g(row[side][0]["value"]))]
                    out += [("residual", _e(row[side][0]["residual"]))]
            out += [("next largest", _g(p["value"])) for p in row["top"][1:]]
            out.append(("steps", str(row["steps"])))
    elif command == "trace":
        for row in [r["trace"], *r["layers"].values()]:
            out += [("trace", _g(row["value"])), ("parameters", f"{row['parameters']:,}")]
            if not row["exact"]:
                out += [("± stderr", _e(row["stderr"])), ("95 % interval ±", _e(row["interval"]))]
    elif command == "diag":
        for row in r["layers"].values():
            out += [(k, _s(row[k])) for k in ("mean", "std", "min", "median", "max", "sum")]
            out += [("count", f"{row['count']:,}"), ("neg", f"{row['fraction_negative']:.0%}")]
    elif command == "density":
        out += [("λmax", _g(r["top"][0]["value"])), ("λmin", _g(r["bottom"][0]["value"]))]
        out += [("negative mass", _pct(r["negative_mass"]["value"]))]
        for row in r["layers"].values():
            out += [("negative mass", _pct(row["negative_mass"]["value"]))]
            out += [("params", f"{row['parameters']:,}"), ("σ", _s(row["sigma"]))]
    elif command in ("report", "check"):
        for row in r["layers"].values() if command == "report" else []:
            out += [
                ("trace ± stderr", _g(row["trace"]["value"])),
                ("params", f"{row['parameters']:,}"),
            ]
            out += [("λmax", _g(row["top"]["value"])), ("λmin", _g(row["bottom"]["value"]))]
            out += [
                ("diag min", _s(row["diagonal"]["min"])),
                ("diag max", _s(row["diagonal"]["max"])),
            ]
        for item in r.get("checks", []):
            out += [("limit", _g(item["limit"])), ("measured", _g(item["measured"]))]
            out += [("margin", f"{item['margin']:+.3g}")]
        if command == "report":
            s = r["summary"]
            out += [("λmax", _g(s["top"]["value"])), ("λmin", _g(s["bottom"]["value"]))]
            out += [("trace ± stderr", _g(s["trace"]["value"])), ("λmin/λmax", _s(s["ratio"]))]
    elif command == "compare":
        for point in r["checkpoints"]:
            s = point["summary"]
            out += [("λmax", _g(s["top"]["value"])), ("λmin", _g(s["bottom"]["value"]))]
            out += [("trace", _g(s["trace"]["value"])), ("λmin/λmax", _s(s["ratio"]))]
            out += [("trace/param", _s(s["trace_per_parameter"]))]
    elif command == "info":
        for layer in r["layers"]:
            out += [
                ("parameters", f"{layer['parameters']:,}"),
                ("grad norm", _g(layer["grad_norm"])),
            ]
        out += [("", f"{r['gradient']['loss']:.6g}"), ("", f"{r['gradient']['grad_norm']:.6g}")]
    return out


def _whole(text: str, number: str) -> bool:
    """Whether ``number`` stands on one line of ``text`` as a whole token."""
    pattern = r"(?<![\w.+\-−])" + re.escape(number) + r"(?![\w]|\.\d)"
    return re.search(pattern, text) is not None


def _left_out(text: str) -> set[str]:
    """The columns a table says it left out for width."""
    flat = " ".join(text.split())
    found = re.findall(r"not shown at \d+ columns: (.*?) \(all in --json\)", flat)
    return {name for group in found for name in group.split(", ")}


def _named(text: str, names: list[str]) -> list[str]:
    """The names that ``text`` shows, whole or shortened to a form that fits only them."""
    tokens = {t for line in text.splitlines() for t in re.split(r"[\s│┃]+", line) if t}
    shown = []
    for name in names:
        if name in tokens:
            shown.append(name)
            continue
        for token in (t for t in tokens if "…" in t):
            head, tail = token.split("…", 1)
            fits = [n for n in names if n.startswith(head) and n.endswith(tail)]
            if fits == [name]:
                shown.append(name)
                break
    return shown


def _check_table(command: str, text: str, document: dict[str, Any], width: int) -> None:
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, f"lines over {width} columns:\n" + "\n".join(too_long)
    hidden = _left_out(text)
    assert not hidden & ESSENTIAL[command], f"essential columns left out: {hidden}\n{text}"
    for column, number in _expected(command, document):
        if column not in hidden and number not in ("nan", "-"):
            assert _whole(text, number), f"{column} {number!r} not whole at {width}:\n{text}"


# -- the real commands -------------------------------------------------------------------------
@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_table_keeps_every_number_whole(runs, command: str, width: int) -> None:
    table, as_json = runs(command, width), runs(command, None)
    assert table.exit_code == as_json.exit_code and table.exit_code in (0, 1), table.output
    document = json.loads(as_json.stdout)
    _check_table(command, table.stdout, document, width)
    names = [layer["name"] for layer in document["results"]["layers"]] if command == "info" else []
    if command in ("spectrum", "trace", "diag", "density", "report"):
        names = list(document["results"]["layers"])
        assert len(names) == 12, names
    assert _named(table.stdout, names) == names, table.stdout


@pytest.mark.parametrize("command", ["spectrum", "trace", "diag", "density", "report", "check"])
def test_the_loss_and_its_source_are_under_every_curvature_table(runs, command: str) -> None:
    text = " ".join(runs(command, 80).stdout.split())
    assert "loss: cross_entropy (from hesscli.toml), mean over 16 samples" in text, text


def test_long_names_are_shortened_in_the_middle_at_120_columns(runs) -> None:
    text = runs("spectrum", 120).stdout
    assert "model.bert.encoder.layer.10.attention.self.query" in runs("spectrum", None).stdout
    rows = [line for line in text.splitlines() if "attention" in line]
    assert rows and all("…" in row for row in rows[:3]), text  # whole names would not fit


def test_a_pipe_gets_80_columns_and_no_blank_line_on_stderr(bert: Path) -> None:
    """Through a real pipe, with no terminal anywhere: Rich's default width, quiet stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TTY_COMPATIBLE="")
    command = [sys.executable, "-m", "hesscli", "diag", *COMMANDS["diag"]]
    done = subprocess.run(
        command, cwd=bert, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    again = subprocess.run(
        [*command, "--json"], cwd=bert, env=env, stdin=subprocess.DEVNULL, capture_output=True
    )
    _check_table("diag", done.stdout, json.loads(again.stdout), 80)
    assert max(len(line) for line in done.stdout.splitlines()) > 60  # laid out for 80, not less
    assert "" not in done.stderr.splitlines(), repr(done.stderr)


# -- the layout rules on hand-built tables -----------------------------------------------------
HF = [f"model.bert.encoder.layer.{i}.attention.self.{w}" for i in (1, 10, 11) for w in "qkv"]


def _render(renderable: object, width: int) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, no_color=True, color_system=None).print(renderable)
    return buffer.getvalue()


def test_short_names_identify_their_layer_or_are_refused() -> None:
    for width in (20, 24, 30, 40):
        short = shorten_names(HF, width)
        if short is None:
            continue
        assert all(len(s) <= width for s in short)
        assert _named("\n".join(short), HF) == HF, short
    assert shorten_names(HF, 12) is None  # "…self.query" fits three layers
    assert shorten_names(HF, 100) == HF


@pytest.mark.parametrize("width", [30, 44, 60, 80])
def test_a_table_that_cannot_fit_stacks_and_keeps_numbers_whole(width: int) -> None:
    numbers = ["-1.234e-05", "123,456,789", "0.0006239", "9.87654e+12"]
    columns = [Column("layer", "name", "left"), *(Column(f"c{i}") for i in range(4))]
    table = FitTable(columns, [[name, *numbers] for name in HF])
    text = _render(table, width)
    assert max(len(line) for line in text.splitlines()) <= width, text
    assert all(_whole(text, n) for n in numbers), text
    assert _named(text, HF) == HF, text


def _spectrum(converged: bool) -> Report:
    pairs = [ts.eigenvalue(2.5), ts.eigenvalue(1.5, converged=converged)]
    base = ts.report("report")
    results = SpectrumResults(
        top=pairs,
        bottom=[ts.eigenvalue(-0.5)],
        steps=20,
        exact=False,
        tolerance=1e-7,
        layers={},
        engine=ts.engine(),
    )
    return replace(base, command="spectrum", results=results)


@pytest.mark.parametrize("converged", [True, False])
def test_the_not_converged_legend_appears_only_with_a_mark(converged: bool) -> None:
    base = ts.report("report")
    layers = {
        name: replace(layer, bottom=Eigenvalue(-0.03, 2e-5, 2e-7, converged))
        for name, layer in base.results.layers.items()
    }
    results = replace(base.results, layers=layers)
    text = _render(report_tables.report_renderable(replace(base, results=results)), 120)
    assert ("* not converged" in text) is (not converged), text
    for report, render in [
        (ts.report("compare"), check_tables.compare_renderable),  # all converged
        (ts.report("density"), density_tables.density_renderable),  # λmin not converged
    ]:
        text = _render(render(report), 120)
        assert ("* not converged" in text) == (re.search(r"\d\*", text) is not None), text


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("default", "loss: cross_entropy (inferred from the targets)"),
        ("option", "loss: cross_entropy (given with --loss)"),
        ("checkpoint metadata", "loss: cross_entropy (from the checkpoint's metadata)"),
    ],
)
def test_the_loss_line_says_why(source: str, said: str) -> None:
    report = _spectrum(True)
    sources = {**report.settings.sources, "loss": source}
    report = replace(report, settings=replace(report.settings, sources=sources))
    assert said in " ".join(_render(spectrum_renderable(report), 80).split())


# -- stderr: bars, the plan line, blank lines --------------------------------------------------
@pytest.fixture
def logs() -> Iterator[None]:
    """The ``hesscli`` logger's handlers, level and propagation, restored after the test."""
    logger = logging.getLogger("hesscli")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_no_bars_and_no_blank_line_without_a_terminal(capsys, logs, monkeypatch) -> None:
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    configure_logging()  # its handler writes to this test's captured stderr
    with progress_bars() as progress:
        progress("Lanczos", 3, 10)
        stderr_console().print("plan: 3 data passes", markup=False, soft_wrap=True)
        logging.getLogger("hesscli").info("a note")
    assert capsys.readouterr().err == "plan: 3 data passes\nhesscli: a note\n"


def test_lines_printed_while_bars_run_go_above_them(capsys, logs, monkeypatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # Rich treats the captured stderr as a terminal
    monkeypatch.setenv("TERM", "xterm")
    configure_logging()
    before = sys.stderr
    with progress_bars() as progress:
        progress("Lanczos: eigenvalues", 3, 10)
        stderr_console().print("plan: 3 data passes", markup=False, soft_wrap=True)
        logging.getLogger("hesscli").info("a note from the engine")
        progress("Lanczos: eigenvalues", 10, 10)
    assert sys.stderr is before  # restored
    raw = capsys.readouterr().err
    assert "Lanczos" in raw  # the bars were drawn
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    lines = re.split(r"[\r\n]", plain)
    for said in ("plan: 3 data passes", "hesscli: a note from the engine"):
        assert said in lines, f"{said!r} shares a line with a bar: {plain!r}"


def test_bars_leave_the_log_handlers_as_they_were(capsys, logs, monkeypatch) -> None:
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    configure_logging()
    handler = logging.getLogger("hesscli").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = handler.stream
    with progress_bars():
        assert handler.stream is not stream
    assert handler.stream is stream
