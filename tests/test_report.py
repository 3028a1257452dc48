"""``report``, ``check`` and ``compare`` computations: shared passes, same numbers as alone.

The report steps the whole-model and per-layer eigenvalue runs and the density probes in one
data pass per step; these tests hold it to the numbers of ``spectrum``, ``trace``, ``diag`` and
``density`` run alone with the same seed, to a dense float64 Hessian, and to the documented
gate and flag rules.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hesscli.cli.render.json_render import render_json
from hesscli.errors import ConfigError
from hesscli.results import Eigenvalue, LayerSummary, Mass, Summary, Trace
from hesscli.runs import diag as diag_run
from hesscli.runs.check import Thresholds, run_check
from hesscli.runs.compare import run_compare
from hesscli.runs.density import run_density
from hesscli.runs.diag import run_diag
from hesscli.runs.flags import (
    DOMINANT_SHARE,
    FLAT_RATIO,
    NEGATIVE_RATIO,
    SADDLE_MASS,
    layer_flags,
    model_flags,
)
from hesscli.runs.prepare import Request
from hesscli.runs.report import ReportSettings, run_report
from hesscli.runs.spectrum import run_spectrum
from hesscli.runs.trace import run_trace
from tests.cases import open_sample
from tests.conftest import SAMPLES

MLP = SAMPLES / "digits_mlp"
OPTIONS = {"checkpoint": "model.safetensors", "dtype": "float64", "max_samples": 32}
SETTINGS = ReportSettings(probes=4, steps=30)


pytestmark = pytest.mark.usefixtures("one_thread")


def _request(folder: Path = MLP, **options: object) -> Request:
    return Request(options={**OPTIONS, **options}, cwd=folder)


@pytest.fixture(scope="module")
def report() -> object:
    plans = []
    found = run_report(_request(), layer_patterns=[], settings=SETTINGS, announce=plans.append)
    assert len(plans) == 1  # announced once, before the run's bulk
    return found


def _same(a: Eigenvalue, b: Eigenvalue) -> None:
    assert a.value == pytest.approx(b.value, rel=1e-9, abs=1e-12)
    assert a.converged == b.converged


def test_eigenvalues_equal_spectrum_alone(report) -> None:
    alone = run_spectrum(_request(), layer_patterns=[], top_k=1, bottom_k=1, per_layer=True)
    summary, layers = report.results.summary, report.results.layers
    _same(summary.top, alone.results.top[0])
    _same(summary.bottom, alone.results.bottom[0])
    assert list(layers) == list(alone.results.layers)
    for name, layer in layers.items():
        _same(layer.top, alone.results.layers[name].top[0])
        _same(layer.bottom, alone.results.layers[name].bottom[0])


def test_traces_and_diagonals_equal_trace_and_diag_alone(report) -> None:
    trace = run_trace(_request(), layer_patterns=[], method="exact").results
    diag = run_diag(_request(), layer_patterns=[]).results
    summary = report.results.summary
    assert summary.trace.value == pytest.approx(trace.trace.value, rel=1e-12)
    assert summary.trace.exact
    for name, layer in report.results.layers.items():
        assert layer.trace.value == pytest.approx(trace.layers[name].value, rel=1e-12)
        assert layer.diagonal == diag.layers[name]
    assert summary.trace_per_parameter == pytest.approx(
        trace.trace.value / report.inputs.trainable_parameters
    )


def test_density_equals_density_alone(report) -> None:
    alone = run_density(_request(), layer_patterns=[], probes=4, steps=30).results
    density = report.results.density
    for probe, nodes in enumerate(density.nodes):
        assert nodes == pytest.approx(alone.nodes[probe], rel=1e-9, abs=1e-12)
    assert density.negative_mass == alone.negative_mass
    assert report.results.summary.negative_mass == density.negative_mass


def test_report_shares_data_passes(report) -> None:
    """Fewer passes than the single commands spend, because their columns ride together."""
    spent = 0
    for run in (
        run_spectrum(_request(), layer_patterns=[], top_k=1, bottom_k=1),
        run_spectrum(_request(), layer_patterns=[], top_k=1, bottom_k=1, per_layer=True),
        run_density(_request(), layer_patterns=[], probes=4, steps=30),
    ):
        spent += run.cost.data_passes
    assert report.cost.data_passes < spent
    plan = report.results.plan
    assert plan.data_passes > 0
    assert plan.products > 0
    assert plan.seconds > 0


def test_report_matches_the_dense_hessian(report) -> None:
    op = open_sample("digits_mlp", dtype="float64", max_samples=32)
    dense = op.dense()
    eigenvalues = torch.linalg.eigvalsh(dense)
    summary = report.results.summary
    assert summary.top.value == pytest.approx(float(eigenvalues[-1]), rel=1e-8)
    assert summary.bottom.value == pytest.approx(float(eigenvalues[0]), rel=1e-6)
    assert summary.trace.value == pytest.approx(float(dense.trace()), rel=1e-10)
    assert summary.ratio == pytest.approx(summary.bottom.value / summary.top.value)
    mass = summary.negative_mass
    exact = float((eigenvalues < -mass.threshold).double().mean())
    assert mass.low - 4 * mass.stderr <= exact <= mass.high + 4 * mass.stderr
    significant = summary.significant_negative_mass
    exact = float((eigenvalues < -significant.threshold).double().mean())
    assert significant.low - 4 * significant.stderr <= exact
    assert exact <= significant.high + 4 * significant.stderr
    for block in op.blocks:
        rows = slice(block.start, block.stop)
        block_eigs = torch.linalg.eigvalsh(dense[rows, rows])
        layer = report.results.layers[block.name]
        assert layer.top.value == pytest.approx(float(block_eigs[-1]), rel=1e-8)
        assert layer.bottom.value == pytest.approx(float(block_eigs[0]), rel=1e-6, abs=1e-7)


def test_estimated_diagonals_share_probes_with_traces(monkeypatch: pytest.MonkeyPatch) -> None:
    """With unit columns off, conv layers are estimated: their traces come from the Diag++
    probes, carry a standard error, and cover the exact trace."""
    monkeypatch.setattr(diag_run, "UNIT_COLUMNS_LIMIT", 0)
    folder = SAMPLES / "digits_cnn"
    request = Request(
        options={"checkpoint": "model.pt", "dtype": "float64", "max_samples": 16}, cwd=folder
    )
    settings = ReportSettings(probes=2, steps=10, diag_products=120)
    found = run_report(request, layer_patterns=[], settings=settings).results
    diag = run_diag(request, layer_patterns=[], products=120).results
    op = hesscli_operator(folder)
    exact = torch.diagonal(op.dense())
    estimated = [name for name, layer in found.layers.items() if not layer.trace.exact]
    assert estimated  # the convolutions
    for block in op.blocks:
        layer = found.layers[block.name]
        assert layer.diagonal == diag.layers[block.name]
        truth = float(exact[block.start : block.stop].sum())
        assert abs(layer.trace.value - truth) <= 4 * layer.trace.stderr + 1e-9 * abs(truth)
    assert not found.summary.trace.exact
    assert abs(found.summary.trace.value - float(exact.sum())) <= 4 * found.summary.trace.stderr


def hesscli_operator(folder: Path) -> object:
    return open_sample(folder.name, dtype="float64", max_samples=16)


# -- check ------------------------------------------------------------------------------------
def test_check_thresholds(report, tmp_path: Path) -> None:
    top = report.results.summary.top.value
    trace = report.results.summary.trace.value
    ok = run_check(
        _request(),
        layer_patterns=[],
        thresholds=Thresholds(max_eigenvalue=top * 1.1, max_trace=trace * 1.1, stability_lr=0.1),
        settings=SETTINGS,
    ).results
    assert ok.passed
    assert [c.name for c in ok.checks] == ["max-eigenvalue", "stability-lr", "max-trace"]
    assert ok.checks[0].margin == pytest.approx(top * 0.1)
    assert ok.summary == report.results.summary  # the same numbers as report
    failed = run_check(
        _request(),
        layer_patterns=[],
        thresholds=Thresholds(max_eigenvalue=top * 0.9, max_layer_trace=1e9),
        settings=SETTINGS,
    ).results
    assert not failed.passed
    assert [c.passed for c in failed.checks] == [False] + [True] * len(report.results.layers)
    assert failed.checks[0].margin == pytest.approx(-top * 0.1)


def test_stability_bound_is_two_over_lr(report) -> None:
    top = report.results.summary.top.value
    unstable = run_check(
        _request(),
        layer_patterns=[],
        thresholds=Thresholds(stability_lr=2 / top * 1.01),
        settings=SETTINGS,
    ).results
    assert not unstable.passed
    assert unstable.checks[0].limit == pytest.approx(top / 1.01)
    assert "sharp" in [f.name for f in unstable.flags]


def test_baseline_detects_regressions(report, tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(render_json(report))
    same = run_check(
        _request(), layer_patterns=[], thresholds=Thresholds(), baseline=base, settings=SETTINGS
    ).results
    assert same.passed
    assert {c.quantity for c in same.checks} == {"lambda_max", "lambda_min", "trace"}
    document = json.loads(base.read_text())
    document["results"]["summary"]["top"]["value"] *= 1.2  # the old model was 20 % sharper
    document["results"]["layers"]["fc3"]["trace"]["value"] *= 0.9
    base.write_text(json.dumps(document))
    drift = run_check(
        _request(),
        layer_patterns=[],
        thresholds=Thresholds(),
        baseline=base,
        tolerance=0.05,
        settings=SETTINGS,
    ).results
    failed = {(c.quantity, c.layer) for c in drift.checks if not c.passed}
    assert failed == {("lambda_max", None), ("trace", "fc3")}
    loose = run_check(
        _request(),
        layer_patterns=[],
        thresholds=Thresholds(),
        baseline=base,
        tolerance=0.25,
        settings=SETTINGS,
    ).results
    assert loose.passed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("not json", "not a JSON document"),
        ('{"command": "spectrum", "results": {}}', "not the JSON of hesscli report"),
        ('{"command": "report", "results": {"summary": {}}}', "lacks results.summary"),
    ],
)
def test_bad_baselines_are_refused_before_the_run(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        run_check(
            _request(checkpoint="missing.safetensors"),  # the baseline is read first
            layer_patterns=[],
            thresholds=Thresholds(),
            baseline=path,
        )


def test_baseline_of_other_layers_is_refused(report, tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(render_json(report))
    with pytest.raises(ConfigError, match="same layers"):
        run_check(_request(), layer_patterns=["fc1"], thresholds=Thresholds(), baseline=base)


def test_check_needs_something_to_check() -> None:
    with pytest.raises(ConfigError, match="nothing to check"):
        run_check(_request(), layer_patterns=[], thresholds=Thresholds())
    with pytest.raises(ConfigError, match="stability-lr"):
        run_check(_request(), layer_patterns=[], thresholds=Thresholds(stability_lr=-1.0))


# -- compare ------------------------------------------------------------------------------------
def test_compare_equals_report_per_checkpoint() -> None:
    files = ["run/epoch_01.safetensors", "run/epoch_60.safetensors"]
    request = Request(options={"dtype": "float64", "max_samples": 32}, cwd=MLP)
    found = run_compare(request, checkpoints=files, layer_patterns=[], settings=SETTINGS)
    entries = found.results.checkpoints
    assert [Path(e.checkpoint).name for e in entries] == [
        "epoch_01.safetensors",
        "epoch_60.safetensors",
    ]
    final = run_report(
        _request(checkpoint="run/epoch_60.safetensors"), layer_patterns=[], settings=SETTINGS
    ).results
    assert entries[1].summary == final.summary
    assert entries[1].layers == final.layers
    assert entries[0].summary.top.value != entries[1].summary.top.value
    assert found.cost.hvps == sum(e.cost.hvps for e in entries)
    with pytest.raises(ConfigError, match="at least two"):
        run_compare(request, checkpoints=files[:1], layer_patterns=[])


# -- flags ------------------------------------------------------------------------------------
def _summary(
    top: float = 10.0,
    bottom: float = -0.1,
    trace: float = 50.0,
    mass_low: float = 0.0,
    converged: bool = True,
    trace_stderr: float = 0.0,
) -> Summary:
    mass = Mass(mass_low, 0.0, 0.1, mass_low, mass_low + 0.01)
    return Summary(
        top=Eigenvalue(top, 1e-9, 1e-9, converged),
        bottom=Eigenvalue(bottom, 1e-9, 1e-9, True),
        trace=Trace(trace, trace_stderr, trace_stderr == 0, 2 * trace_stderr, 100),
        ratio=bottom / top,
        negative_mass=mass,
        significant_negative_mass=mass,
        trace_per_parameter=trace / 100,
        trace_per_parameter_stderr=trace_stderr / 100,
    )


def _names(flags: list) -> set[str]:
    return {f.name for f in flags}


def test_model_flags_fire_at_their_thresholds() -> None:
    assert _names(model_flags(_summary())) == set()
    assert _names(model_flags(_summary(mass_low=SADDLE_MASS))) == {"saddle"}
    assert _names(model_flags(_summary(mass_low=SADDLE_MASS * 0.99))) == set()
    assert _names(model_flags(_summary(bottom=-NEGATIVE_RATIO * 10))) == {"negative-curvature"}
    assert _names(model_flags(_summary(bottom=-NEGATIVE_RATIO * 9.9))) == set()
    assert _names(model_flags(_summary(), lr=0.21)) == {"sharp"}  # 2/0.21 < 10
    assert _names(model_flags(_summary(), lr=0.19)) == set()
    assert _names(model_flags(_summary(converged=False))) == {"unconverged"}
    assert _names(model_flags(_summary(trace_stderr=6.0))) == {"noisy-trace"}
    assert _names(model_flags(_summary(trace_stderr=4.0))) == set()


def test_layer_flags_fire_at_their_thresholds(report) -> None:
    base = next(iter(report.results.layers.values()))
    summary = _summary()

    def layer(trace: float, top: float, bottom: float) -> LayerSummary:
        return replace(
            base,
            trace=Trace(trace, 0.0, True, 0.0, 10),
            top=Eigenvalue(top, 0.0, 0.0, True),
            bottom=Eigenvalue(bottom, 0.0, 0.0, True),
        )

    assert _names(layer_flags("a", layer(10.0, 5.0, 0.0), summary, layers=3)) == set()
    share = DOMINANT_SHARE * 50
    assert _names(layer_flags("a", layer(share, 5.0, 0.0), summary, layers=3)) == {"dominant"}
    assert _names(layer_flags("a", layer(share, 5.0, 0.0), summary, layers=1)) == set()
    indefinite = layer(10.0, 5.0, -NEGATIVE_RATIO * 5)
    assert _names(layer_flags("a", indefinite, summary, layers=3)) == {"indefinite"}
    flat = layer(1e-6, FLAT_RATIO * 10, 0.0)
    assert _names(layer_flags("a", flat, summary, layers=3)) == {"flat"}
    assert math.isfinite(summary.ratio)
