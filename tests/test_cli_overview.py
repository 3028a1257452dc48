"""``hesscli density``, ``report``, ``check`` and ``compare``: tables, JSON, plots, exit codes.

Three layers of tests:
- the renderers and plots on hand-built result objects (every field chosen by the test, so the
  tables are checked against known numbers and an outlier is known to exist);
- the commands' wiring with the computation replaced by a stub returning those objects (plan on
  stderr, exit codes, ``--plot``, the missing-matplotlib note) — fast and independent of the
  numbers;
- the real commands on the sample models (seed network, or the MLP on 32 samples with few
  probes), end to end.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from importlib.resources import files
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import Result

from hesscli.cli.commands import check as check_command
from hesscli.cli.commands import compare as compare_command
from hesscli.cli.commands import density as density_command
from hesscli.cli.commands import report as report_command
from hesscli.cli.plan_and_plot import NO_MATPLOTLIB
from hesscli.cli.render import check_tables, density_tables, report_tables
from hesscli.cli.render.plots import PlotUnavailable, density_plot, trajectory_plot
from hesscli.results import (
    CheckItem,
    Density,
    Eigenvalue,
    Flag,
    LayerSummary,
    Plan,
    Report,
    Summary,
    Trace,
)
from tests import test_schemas as ts
from tests.conftest import WIDTH, tree_digest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST_SEED = ("--probes", "4", "--steps", "20")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the models are tiny and the runner is shared (see
    tests/test_cli_curvature.py); results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- hand-built results ------------------------------------------------------------------------
# Built from tests/test_schemas.py's builders (the one place that constructs result objects, kept
# in step with results.py), with the numbers these tests read replaced.
OUTLIER = 45.0
COST = replace(ts.cost(1.25), hvps=640, data_passes=80, check_hvps=2, output_space_products=0)
PLAN = Plan(data_passes=96, products=1104, seconds=12.3, pass_seconds=0.128)
FLAGS = [Flag("sharp", "model", "λmax = 45 > 2/lr = 20 (lr = 0.1)")]


def _envelope(command: str, results: object, **options: object) -> Report:
    """``results`` in the envelope of ``command``: 32 samples of the MLP, float64 on cpu."""
    base = ts.report(command)
    return replace(
        base,
        inputs=replace(base.inputs, checkpoint="model.safetensors", samples=32),
        settings=replace(base.settings, max_samples=32, options=dict(options)),
        results=results,
        cost=COST,
    )


def _curve(parameters: int, low: float, high: float, outlier: float | None) -> Density:
    """A bulk near 0 with a negative shoulder and (optionally) a tiny, narrow outlier peak."""
    grid = np.linspace(low, high, 400)
    values = np.exp(-0.5 * (grid / 0.4) ** 2) + 0.05 * np.exp(-0.5 * ((grid + 1) / 0.2) ** 2)
    if outlier is not None:
        values += 1e-3 * np.exp(-0.5 * ((grid - outlier) / 0.15) ** 2)
    return replace(
        ts.density(parameters),
        grid=grid.tolist(),
        density=values.tolist(),
        stderr=(0.1 * values).tolist(),
        sigma=0.15,
        probes=2,
        steps=4,
        nodes=[[-1.0, 0.0, 0.2, outlier or 1.0], [-0.9, 0.05, 0.3, 2.0]],
        weights=[[0.05, 0.5, 0.449, 0.001], [0.05, 0.5, 0.449, 0.001]],
        negative_mass=ts.mass(0.0523, 0.0071),
        significant_negative_mass=ts.mass(0.0312, 0.0045),
    )


def _density_report(per_layer: bool = True) -> Report:
    whole = _curve(ts.PARAMETERS, -2.0, 50.0, OUTLIER)
    layers = {"fc1": _curve(2080, -1.5, 5.0, None), "fc2": _curve(1056, -1.5, 5.0, None)}
    results = replace(
        ts.results("density"),
        **{f.name: getattr(whole, f.name) for f in fields(Density)},
        top=[Eigenvalue(OUTLIER, 2.5e-5, 2.5e-5, True), Eigenvalue(12.5, 3e-3, 3e-3, False)],
        bottom=[Eigenvalue(-1.0, 4e-4, 4e-4, True)],
        trace=Trace(value=123.4, stderr=5.6, exact=False, interval=11.0, parameters=3466),
        layers=layers if per_layer else {},
    )
    return _envelope("density", results, probes=2)


def _layers() -> dict[str, LayerSummary]:
    rows = ts.layer_summaries()
    return {
        "fc1": replace(
            rows["fc1"],
            trace=Trace(80.5, 0.0, True, 0.0, 2080),
            top=Eigenvalue(30.25, 1e-6, 1e-6, True),
            bottom=Eigenvalue(-0.75, 1e-6, 1e-6, True),
            diagonal=replace(rows["fc1"].diagonal, min=-0.0123, max=4.56, fraction_negative=0.25),
            flags=[],
        ),
        "fc3": replace(
            rows["fc3"],
            trace=Trace(12.75, 0.5, False, 1.0, 330),
            top=Eigenvalue(9.5, 0.2, 0.2, False),
            bottom=Eigenvalue(-0.02, 1e-6, 1e-6, True),
            diagonal=replace(rows["fc3"].diagonal, min=0.0, max=0.9, fraction_negative=0.0),
            flags=["flat"],
        ),
    }


def _summary(top: float = OUTLIER, trace: float = 123.4) -> Summary:
    return replace(
        ts.summary(),
        top=Eigenvalue(top, 2.5e-5, 2.5e-5, True),
        bottom=Eigenvalue(-1.0, 4e-4, 4e-4, True),
        trace=Trace(trace, 5.6, False, 11.0, 3466),
        ratio=-0.0222,
        negative_mass=ts.mass(0.0523, 0.0071),
        significant_negative_mass=ts.mass(0.0312, 0.0045),
        trace_per_parameter=0.0356,
        trace_per_parameter_stderr=0.0016,
    )


def _report_report() -> Report:
    results = replace(
        ts.results("report"),
        summary=_summary(),
        layers=_layers(),
        density=_curve(ts.PARAMETERS, -2.0, 50.0, OUTLIER),
        flags=FLAGS,
        plan=PLAN,
    )
    return _envelope("report", results, lr=0.1)


def _item(name: str, *, passed: bool, stderr: float = 0.0) -> CheckItem:
    return replace(
        ts.results("check").checks[0],
        name=name,
        quantity="top" if name == "max-eigenvalue" else "trace",
        layer=None if name == "max-eigenvalue" else "fc1",
        relation="<=",
        limit=40.0,
        measured=45.0 if not passed else 30.0,
        stderr=stderr,
        allowance=1.96 * stderr,
        margin=-5.0 if not passed else 10.0,
        passed=passed,
    )


def _check_report(passed: bool) -> Report:
    checks = [_item("max-eigenvalue", passed=passed), _item("max-layer-trace", passed=True)]
    checks.append(_item("max-layer-trace", passed=True, stderr=0.5))
    results = replace(
        ts.results("check"),
        passed=passed,
        checks=checks,
        baseline="base.json",
        tolerance=0.05,
        summary=_summary(),
        layers=_layers(),
        flags=[],
    )
    return _envelope("check", results)


def _compare_report(lr: float | None = 0.05) -> Report:
    base = ts.results("compare")
    points = [
        replace(
            base.checkpoints[0],
            checkpoint=f"runs/{i}/model.safetensors",
            summary=_summary(10.0 * (i + 1), 50.0 + i),
            flags=FLAGS if i == 2 else [],
        )
        for i in range(3)
    ]
    bound = None if lr is None else 2 / lr
    return _envelope("compare", replace(base, checkpoints=points), lr=lr, stability_bound=bound)


def _text(renderable: object) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=int(WIDTH), no_color=True, color_system=None).print(renderable)
    return buffer.getvalue()


def _fits(text: str) -> str:
    assert max(len(line) for line in text.splitlines()) <= int(WIDTH), text
    return text


# -- renderers ---------------------------------------------------------------------------------
def test_sparkline_keeps_a_narrow_outlier_and_spans_the_grid():
    report = _density_report()
    line = density_tables.sparkline(report.results.grid, report.results.density).plain
    assert len(line) == density_tables.WIDTH
    assert set(line) <= {" ", *density_tables.BLOCKS}
    assert line.count("█") >= 1
    # The outlier at λ = 45 (grid -2 … 50) is 1e-3 of the peak and 0.15 wide: still drawn.
    column = round((OUTLIER + 2) / 52 * (density_tables.WIDTH - 1))
    assert line[column - 1 : column + 2].strip(), line
    assert line[-1] == " "  # nothing near λ = 50
    axis = density_tables.axis(report.results.grid).plain
    assert axis.startswith("-2") and axis.endswith("50 λ") and " 0 " in axis


def test_sparkline_of_an_empty_or_flat_density():
    assert density_tables.sparkline([], []).plain == "(no density)"
    assert density_tables.sparkline([0.0, 1.0], [0.0, 0.0]).plain == "  "
    assert density_tables.axis([]).plain == ""


def test_density_table():
    text = _fits(_text(density_tables.density_renderable(_density_report())))
    assert text.startswith("Eigenvalue density of the hessian — model.py:DigitsMLP, 32 samples")
    for expected in (
        "λmax (largest Ritz value)",
        "residual 2.5e-05",
        "next: 12.5*",
        "λmin (smallest Ritz value)",
        "5.23% ± 0.71%",
        "λ < −1.0e-09; bounds 2.23% … 10.2%",
        "significant negative mass   3.12% ± 0.45%",
        "123.4 ± 5.6",
        "Hutchinson, 2 probes",
        "2 × 4",
        "σ = 0.15, 400 points",
        "Per layer",
        "│ fc1 ",
        "2,080",
        "-1.5 … 5",
        "cost: 1.25 s, 640 curvature-vector products",
        "route: forward-over-reverse",
    ):
        assert expected in text, expected
    assert any(block in text for block in density_tables.BLOCKS)


def test_density_table_without_layers_has_no_layer_table():
    text = _fits(_text(density_tables.density_renderable(_density_report(per_layer=False))))
    assert "Per layer" not in text


def test_report_table():
    text = _fits(_text(report_tables.report_renderable(_report_report())))
    assert text.startswith("Curvature report of the hessian")
    for heading in ("layer", "params", "trace ± stderr", "λmax", "λmin", "diag min", "diag max"):
        assert heading in text
    for expected in (
        "│ fc1 ",
        "80.5 (exact)",
        "12.75 ± 0.5",
        "30.25",
        "9.5*",  # not converged
        "-0.0123",
        "25%",
        "flat",
        "Model: all selected layers, 3,466 parameters",
        "5.23% ± 0.71% │    3.12% ± 0.45%",
        "-0.0222",
        "0.0356 ± 0.0016",
        "eigenvalue density: 2 probes × 4 steps",
        "flags:\n  sharp [model]: λmax = 45 > 2/lr = 20 (lr = 0.1)",
        "planned: 96 data passes, 1,104 products, about 12 s (0.13 s per pass)",
        "route: forward-over-reverse",
    ):
        assert expected in text, expected


def test_report_without_flags_says_none():
    report = _report_report()
    report = replace(report, results=replace(report.results, flags=[]))
    assert "flags: none" in _text(report_tables.report_renderable(report))


@pytest.mark.parametrize("passed", [True, False])
def test_check_table(passed):
    text = _fits(_text(check_tables.check_renderable(_check_report(passed))))
    assert text.startswith("Check of the hessian")
    for heading in ("check", "quantity", "limit", "measured", "allowance", "margin", "result"):
        assert heading in text
    assert (
        "│ λmax " in text
        and "trace [fc1]" in text
        and "≤ 40" in text
        and "30 ± 0.5" in text
        and "0.98" in text
    )
    assert "baseline: base.json (tolerance 5%)" in text
    if passed:
        assert "FAIL" not in text and "passed: all 3 checks" in text and "+10" in text
    else:
        assert "FAILED: 1 of 3 checks" in text and " FAIL │" in text and "-5" in text


def test_compare_table_and_short_names():
    text = _fits(_text(check_tables.compare_renderable(_compare_report())))
    assert text.startswith("Comparison of the hessian")
    for expected in ("0/model.safetensors", "2/model.safetensors", "│ sharp ", "51 ± 5.6"):
        assert expected in text, expected
    assert check_tables.short_names(["a/x.pt", "b/y.pt"]) == ["x.pt", "y.pt"]
    assert check_tables.short_names(["a/x.pt", "b/x.pt"]) == ["a/x.pt", "b/x.pt"]
    assert check_tables.short_names(["x.pt", "x.pt"]) == ["x.pt", "x.pt"]


def test_plan_line():
    assert report_tables.plan_line(PLAN) == (
        "plan: 96 data passes, 1,104 products, about 12 s (0.13 s per pass)"
    )
    assert "about 0.5 s" in report_tables.plan_line(replace(PLAN, seconds=0.5))
    assert "about 3.0 min" in report_tables.plan_line(replace(PLAN, seconds=180))
    unknown = report_tables.plan_line(replace(PLAN, seconds=math.nan, pass_seconds=math.nan))
    assert unknown == "plan: 96 data passes, 1,104 products"


def test_flags_are_grouped_by_subject():
    flags = [Flag("saddle", "model", ""), Flag("dominant", "fc1", ""), Flag("sharp", "model", "")]
    flags.append(Flag("indefinite", "fc1", ""))
    assert check_tables._flag_names(flags) == "saddle, sharp; fc1: dominant, indefinite"
    assert check_tables._flag_names([]) == "-"


# -- plots -------------------------------------------------------------------------------------
def _png(path: Path, *, min_height: int = 200) -> np.ndarray:
    """The image at ``path``: a PNG by its magic bytes, read back by matplotlib."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and image.shape[0] >= min_height
    return image


def test_density_plot_of_density_and_report(tmp_path):
    density = tmp_path / "density.png"
    density_plot(_density_report(), density)
    tall = _png(density)
    report = tmp_path / "report.png"
    density_plot(_report_report(), report)
    short = _png(report)
    assert tall.shape[0] > short.shape[0]  # one panel per layer with --per-layer


def test_density_plot_x_range_includes_the_marked_top_eigenvalue(tmp_path):
    """A top eigenvalue outside the density's grid still gets its dashed line on the plot."""
    report = _density_report(per_layer=False)
    far = replace(report.results, top=[Eigenvalue(80.0, 1e-6, 1e-6, True)])
    pdf = tmp_path / "far.pdf"
    density_plot(replace(report, results=far), pdf)
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_trajectory_plot(tmp_path):
    path = tmp_path / "trajectory.png"
    trajectory_plot(_compare_report(), path)
    _png(path)
    trajectory_plot(_compare_report(lr=None), tmp_path / "no_lr.png")
    _png(tmp_path / "no_lr.png")


def test_plots_refuse_other_results(tmp_path):
    with pytest.raises(TypeError, match="no density in a compare report"):
        density_plot(_compare_report(), tmp_path / "x.png")
    with pytest.raises(TypeError, match="no checkpoints in a report report"):
        trajectory_plot(_report_report(), tmp_path / "x.png")


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import matplotlib`` (and every submodule already imported) fail."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_plots_without_matplotlib_raise_plot_unavailable(tmp_path, no_matplotlib):
    with pytest.raises(PlotUnavailable):
        density_plot(_density_report(), tmp_path / "x.png")
    with pytest.raises(PlotUnavailable):
        trajectory_plot(_compare_report(), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# -- command wiring, with the computation stubbed ----------------------------------------------
def _said(result: Result) -> list[str]:
    """The non-blank lines on stderr (a non-terminal progress display leaves a blank line)."""
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Callable[[object, str, Report], list[dict]]:
    """``stub(module, "run_x", report)``: the command gets ``report`` and records its calls.

    The stub reports progress and announces the plan like the real runs do.
    """

    def install(module: object, name: str, report: Report) -> list[dict]:
        calls: list[dict] = []

        def run(request: object, **kwargs: object) -> Report:
            calls.append({"request": request, **kwargs})
            kwargs["progress"]("working", 1, 2)  # type: ignore[operator]
            if "announce" in kwargs:
                kwargs["announce"](PLAN)  # type: ignore[operator]
            return report

        monkeypatch.setattr(module, name, run)
        return calls

    return install


def test_stubbed_density_passes_options_and_writes_the_plot(cli, stub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = stub(density_command, "run_density", _density_report())
    args = ("density", "m.pt", "--probes", "3", "--steps", "7", "--per-layer", "--points", "50")
    result = cli(*args, "--sigma", "0.5", "--layer", "fc1", "--plot", "d.png")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Eigenvalue density")
    assert _said(result) == ["wrote plot d.png"]
    _png(tmp_path / "d.png")
    (call,) = calls
    assert call["request"].options["checkpoint"] == "m.pt"
    expected = {"probes": 3, "steps": 7, "per_layer": True, "points": 50, "sigma": 0.5}
    assert {k: call[k] for k in expected} == expected
    assert call["layer_patterns"] == ["fc1"]


def test_stubbed_report_announces_the_plan_on_stderr_only(cli, stub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = stub(report_command, "run_report", _report_report())
    result = cli("report", "m.pt", "--json", "--lr", "0.1", "--diag-products", "50")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["command"] == "report"
    assert _said(result) == [report_tables.plan_line(PLAN)]
    settings = calls[0]["settings"]
    # --probes unset: None here, the size-aware default is chosen by run_report
    assert (settings.lr, settings.diag_products, settings.probes) == (0.1, 50, None)


@pytest.mark.parametrize(("passed", "code"), [(True, 0), (False, 1)])
def test_stubbed_check_exit_code_follows_passed(cli, stub, tmp_path, monkeypatch, passed, code):
    monkeypatch.chdir(tmp_path)
    calls = stub(check_command, "run_check", _check_report(passed))
    result = cli("check", "m.pt", "--max-eigenvalue", "40", "--stability-lr", "0.01", "--json")
    assert result.exit_code == code, result.output
    assert json.loads(result.stdout)["results"]["passed"] is passed
    thresholds = calls[0]["thresholds"]
    assert (thresholds.max_eigenvalue, thresholds.stability_lr) == (40.0, 0.01)
    assert thresholds.max_trace is None and calls[0]["tolerance"] == 0.05
    assert calls[0]["baseline"] is None


def test_stubbed_compare_passes_checkpoints_in_order(cli, stub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = stub(compare_command, "run_compare", _compare_report())
    result = cli("compare", "c.pt", "a.pt", "b.pt", "--plot", "t.png", "--lr", "0.05")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Comparison")
    plan = f"{report_tables.plan_line(PLAN)}, per checkpoint (3 checkpoints)"
    assert _said(result) == [plan, "wrote plot t.png"]
    _png(tmp_path / "t.png")
    assert calls[0]["checkpoints"] == ["c.pt", "a.pt", "b.pt"]
    assert "checkpoint" not in calls[0]["request"].options
    assert calls[0]["settings"].lr == 0.05


@pytest.mark.parametrize(
    ("command", "module", "name", "report"),
    [
        ("density", density_command, "run_density", _density_report),
        ("report", report_command, "run_report", _report_report),
        ("compare", compare_command, "run_compare", _compare_report),
    ],
)
def test_plot_without_matplotlib_is_a_note(
    cli, stub, tmp_path, monkeypatch, no_matplotlib, command, module, name, report
):
    monkeypatch.chdir(tmp_path)
    stub(module, name, report())
    checkpoints = ("a.pt", "b.pt") if command == "compare" else ("a.pt",)
    result = cli(command, *checkpoints, "--plot", "p.png")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    assert _said(result)[-1] == NO_MATPLOTLIB
    assert not (tmp_path / "p.png").exists()


def _usage_error(result: Result, *named: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("hesscli: error:"), message
    for word in named:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("compare", "only.pt"), ["at least 2"]),
        (("compare",), ["checkpoints"]),
        (("check", "m.pt", "--max-eigenvalue", "1", "--bogus"), ["--bogus"]),
        (("density", "m.pt", "--sigma", "0"), ["--sigma"]),
        (("report", "m.pt", "--lr", "-1"), ["--lr"]),
        (("density", "m.pt", "--probes", "0"), ["--probes"]),
        (("check", "m.pt", "--tolerance", "-0.1"), ["--tolerance"]),
        (("check", "m.pt", "--baseline", "missing.json"), ["--baseline", "missing.json"]),
        (("density", "m.pt", "--plot", "nowhere/p.png"), ["--plot", "does not exist"]),
        (("density", "m.pt", "--plot", "p.png", "-o", "p.png"), ["--plot and --output"]),
        (("report", "m.pt", "--plot", "m.pt"), ["--plot m.pt is one of the input files"]),
        (("report", "m.pt", "--plot", "p.xyz"), ["cannot write .xyz", ".png"]),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else None,
)
def test_usage_errors_are_one_line_exit_2_before_any_work(
    cli, stub, tmp_path, monkeypatch, args, named
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.pt").write_bytes(b"weights")
    calls = [
        stub(density_command, "run_density", _density_report()),
        stub(report_command, "run_report", _report_report()),
        stub(check_command, "run_check", _check_report(True)),
        stub(compare_command, "run_compare", _compare_report()),
    ]
    _usage_error(cli(*args), *named)
    assert not any(calls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# -- the real commands on the sample models ------------------------------------------------------
SCHEMAS = files("hesscli").joinpath("schema")
MLP_RUN = [f"run/epoch_{epoch}.safetensors" for epoch in ("01", "05", "20", "60")]


def _document(result: Result, command: str) -> dict:
    """The one JSON document on stdout, valid against the command's packaged schema."""
    assert result.exit_code in (0, 1), result.output
    text = result.stdout.strip()
    assert text.startswith("{") and text.endswith("}"), result.stdout[:500]
    document = json.loads(result.stdout)
    schema = json.loads(SCHEMAS.joinpath(f"{command}.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(document, schema)
    assert document["command"] == command
    return document


def _table(result: Result, first: str) -> str:
    """A table on stdout that fits the pinned width, with no progress or plan on it."""
    assert result.exit_code in (0, 1), result.output
    text = result.stdout
    assert text.startswith(first), text[:300]
    for noise in ("plan:", "Lanczos:", "wrote plot", "╸", "╺", "hesscli: note"):  # ╸╺: bars
        assert noise not in text
    assert "\nroute: " in text and "curvature-vector products" in text
    return _fits(text)


@pytest.fixture
def seed(samples: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work inside a private copy of the seed network's folder (41 parameters, one sample)."""
    folder = samples / "seed_ann"
    monkeypatch.chdir(folder)
    return folder


@pytest.fixture
def mlp(samples: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work inside a private copy of the digits MLP's folder (3,466 parameters)."""
    folder = samples / "digits_mlp"
    monkeypatch.chdir(folder)
    return folder


def test_density_table_json_and_plot(cli, seed, samples, tmp_path):
    before = tree_digest(samples)
    text = _table(cli("density", "model.safetensors", *FAST_SEED), "Eigenvalue density")
    assert any(block in text for block in density_tables.BLOCKS)
    for label in ("λmax (largest Ritz value)", "negative mass", "trace (probes)", "4 × 20"):
        assert label in text
    assert "Per layer" not in text

    plot = tmp_path / "density.png"
    result = cli("density", "model.safetensors", *FAST_SEED, "--per-layer", "--json")
    result_with_plot = cli(
        "density", "model.safetensors", *FAST_SEED, "--per-layer", "--json", "--plot", str(plot)
    )
    document = _document(result, "density")
    assert _document(result_with_plot, "density")["results"] == document["results"]
    assert _said(result_with_plot) == [f"wrote plot {plot}"]
    _png(plot, min_height=600)  # three panels: the selection, fc1, fc2
    results = document["results"]
    assert len(results["grid"]) == len(results["density"]) == 400
    assert set(results["layers"]) == {"fc1", "fc2"}
    assert len(results["nodes"]) == len(results["weights"]) == 4
    assert tree_digest(samples) == before


def test_report_table_plan_and_plot(cli, seed, samples, tmp_path):
    before = tree_digest(samples)
    plot = tmp_path / "report.png"
    result = cli("report", "model.safetensors", *FAST_SEED, "--lr", "0.1", "--plot", str(plot))
    text = _table(result, "Curvature report of the hessian")
    for expected in ("│ fc1 ", "│ fc2 ", "Model: all selected layers, 41 parameters", "flags:"):
        assert expected in text
    assert "sharp [model]: λmax = " in text  # λmax ≈ 35 > 2/0.1
    said = _said(result)
    assert len(said) == 2 and said[0].startswith("plan: ") and " data passes, " in said[0]
    assert said[1] == f"wrote plot {plot}"
    _png(plot)
    assert tree_digest(samples) == before


def test_report_json(cli, seed):
    document = _document(cli("report", "model.safetensors", *FAST_SEED, "--json"), "report")
    results = document["results"]
    assert set(results["layers"]) == {"fc1", "fc2"}
    assert results["summary"]["top"]["value"] > 0
    assert document["settings"]["options"]["probes"] == 4


def test_check_exit_codes(cli, seed):
    options = ("model.safetensors", *FAST_SEED)
    generous = cli("check", *options, "--max-eigenvalue", "1e6", "--max-trace", "1e6")
    text = _table(generous, "Check of the hessian")
    assert generous.exit_code == 0 and "passed: all 2 checks" in text and "FAIL" not in text

    failing = cli("check", *options, "--max-eigenvalue", "1", "--max-layer-trace", "1e6", "--json")
    assert failing.exit_code == 1, failing.output
    document = _document(failing, "check")
    items = {(c["name"], c["layer"]): c for c in document["results"]["checks"]}
    assert items[("max-eigenvalue", None)]["passed"] is False
    assert items[("max-layer-trace", "fc1")]["passed"] is True
    assert document["results"]["passed"] is False

    table = cli("check", *options, "--max-eigenvalue", "1")
    assert table.exit_code == 1 and "FAILED: 1 of 1 checks" in table.stdout

    nothing = cli("check", *options)
    _usage_error(nothing, "threshold")


def test_check_against_a_baseline(cli, seed, samples, tmp_path):
    before = tree_digest(samples)
    base = tmp_path / "base.json"
    result = cli("report", "model.safetensors", *FAST_SEED, "--json", "-o", str(base))
    assert json.loads(base.read_text()) == _document(result, "report")

    same = cli("check", "model.safetensors", *FAST_SEED, "--baseline", str(base))
    text = _table(same, "Check of the hessian")
    assert same.exit_code == 0, same.output
    assert f"baseline: {base}" in text and "FAIL" not in text

    edited = json.loads(base.read_text())
    edited["results"]["summary"]["top"]["value"] /= 2  # λmax "doubled" since the baseline
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(edited))
    drift = cli("check", "model.safetensors", *FAST_SEED, "--baseline", str(moved), "--json")
    assert drift.exit_code == 1, drift.output
    failed = [c for c in _document(drift, "check")["results"]["checks"] if not c["passed"]]
    assert [(c["name"], c["quantity"], c["layer"]) for c in failed] == [
        ("baseline", "lambda_max", None)
    ]

    # A check's own JSON is a baseline too.
    again = tmp_path / "check.json"
    assert (
        cli(
            "check", "model.safetensors", *FAST_SEED, "--baseline", str(base), "-o", str(again)
        ).exit_code
        == 0
    )
    assert cli("check", "model.safetensors", *FAST_SEED, "--baseline", str(again)).exit_code == 0
    assert tree_digest(samples) == before


def test_check_baseline_may_not_be_overwritten(cli, seed, tmp_path):
    base = tmp_path / "base.json"
    assert cli("report", "model.safetensors", *FAST_SEED, "--json", "-o", str(base)).exit_code == 0
    content = base.read_bytes()
    result = cli("check", "model.safetensors", "--baseline", str(base), "-o", str(base))
    _usage_error(result, "is one of the input files")
    assert base.read_bytes() == content


def test_compare_table_json_and_plot(cli, mlp, samples, tmp_path):
    before = tree_digest(samples)
    plot = tmp_path / "trajectory.png"
    options = ("--max-samples", "32", "--probes", "4", "--steps", "20", "--lr", "0.5")
    result = cli("compare", *MLP_RUN, *options, "--plot", str(plot))
    text = _table(result, "Comparison of the hessian")
    rows = [line for line in text.splitlines() if line.startswith("│ epoch_")]
    assert [row.split()[1] for row in rows] == [Path(p).name for p in MLP_RUN]  # in order
    said = _said(result)
    assert said[0].startswith("plan: ") and said[0].endswith("per checkpoint (4 checkpoints)")
    assert said[-1] == f"wrote plot {plot}"
    _png(plot)

    document = _document(cli("compare", *MLP_RUN[:2], *options, "--json"), "compare")
    checkpoints = document["results"]["checkpoints"]
    assert [Path(c["checkpoint"]).name for c in checkpoints] == [
        "epoch_01.safetensors",
        "epoch_05.safetensors",
    ]
    assert all(set(c["layers"]) == {"fc1", "fc2", "fc3"} for c in checkpoints)
    assert document["settings"]["options"]["lr"] == 0.5
    assert tree_digest(samples) == before


def test_compare_needs_two_checkpoints(cli, mlp):
    _usage_error(cli("compare", MLP_RUN[0], "--max-samples", "32"), "at least 2")


def test_real_plot_without_matplotlib_is_a_note(cli, seed, tmp_path, no_matplotlib):
    plot = tmp_path / "density.png"
    result = cli("density", "model.safetensors", *FAST_SEED, "--plot", str(plot))
    _table(result, "Eigenvalue density")
    assert result.exit_code == 0
    assert _said(result) == [NO_MATPLOTLIB]
    assert not plot.exists()


@pytest.mark.parametrize(
    ("command", "option"),
    [("density", "--output"), ("report", "--output"), ("check", "--output"), ("density", "--plot")],
)
@pytest.mark.parametrize("target", ["model.safetensors", "data.pt", "hesscli.toml", "model.py"])
def test_outputs_never_overwrite_an_input(cli, seed, samples, command, option, target):
    """Refused before or after the run; a plot named like a non-image input is refused anyway."""
    before = tree_digest(samples)
    extra = ("--max-eigenvalue", "1e6") if command == "check" else ()
    result = cli(command, "model.safetensors", *FAST_SEED, *extra, option, target)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    # Inputs found only by loading (data, config) are refused after the run: the plan came first.
    *before_error, message = _said(result)
    assert all(line.startswith("plan: ") for line in before_error), result.stderr
    assert message.startswith(f"hesscli: error: {option} {target}"), message
    assert "is one of the input files" in message or "matplotlib cannot write" in message
    assert tree_digest(samples) == before
