"""``hesscli check``: thresholds and a baseline regression gate over the report's numbers.

A check fails only when the violation exceeds what the measurement cannot resolve: 1.96
standard errors for a stochastic trace, the residual ‖Cy − λy‖ for an eigenvalue (some
eigenvalue lies within it, by Bauer–Fike). An eigenvalue that did not converge fails its checks:
a Ritz value lies inside the spectrum, so an unconverged λmax may hide a violation.

Baseline mode compares λmax, λmin, the trace and every layer's trace and λmax with a previous
``report --json`` or ``check --json`` document: each may move by ``tolerance`` × its baseline
magnitude (at least :data:`FLOOR` × the baseline's λmax, so that values near zero do not fail
on round-off), plus the noise of both runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hesscli.errors import ConfigError
from hesscli.results import CheckItem, CheckResults, Eigenvalue, LayerSummary, Report, Summary
from hesscli.runs.envelope import report_for
from hesscli.runs.prepare import Request, prepare
from hesscli.runs.progress import Announce, Progress, quiet, silent
from hesscli.runs.report import DEFAULTS, ReportSettings, check_report_settings, report_options
from hesscli.runs.report import measure as measure_all

#: Two-sided 95 % normal quantile: the noise a stochastic value is granted.
Z95 = 1.959964
#: Baseline tolerances apply to at least this fraction of the baseline's λmax.
FLOOR = 1e-3


@dataclass(frozen=True)
class Thresholds:
    """The limits of ``check`` (``None``: not checked).

    Attributes:
        max_eigenvalue: λmax ≤ this.
        min_eigenvalue: λmin ≥ this.
        max_trace: Tr(C) ≤ this.
        max_layer_trace: Tr(C_ll) ≤ this for every layer.
        stability_lr: λmax < 2/lr (gradient descent with this learning rate is stable).
    """

    max_eigenvalue: float | None = None
    min_eigenvalue: float | None = None
    max_trace: float | None = None
    max_layer_trace: float | None = None
    stability_lr: float | None = None

    def any(self) -> bool:
        """Whether any threshold is set."""
        return any(v is not None for v in vars(self).values())


@dataclass(frozen=True)
class Measured:
    """One quantity as measured: value, standard error, allowance, whether it converged."""

    value: float
    stderr: float
    allowance: float
    trusted: bool = True


def _eigen(e: Eigenvalue) -> Measured:
    return Measured(e.value, 0.0, e.residual, e.converged)


def _trace(value: float, stderr: float) -> Measured:
    return Measured(value, stderr, Z95 * stderr)


def _at_most(name: str, quantity: str, layer: str | None, limit: float, m: Measured) -> CheckItem:
    margin = limit - m.value
    passed = m.trusted and margin + m.allowance >= 0
    return CheckItem(
        name, quantity, layer, "<=", limit, m.value, m.stderr, m.allowance, margin, passed
    )


def _thresholds(
    t: Thresholds, summary: Summary, layers: dict[str, LayerSummary]
) -> list[CheckItem]:
    items = []
    top, bottom = _eigen(summary.top), _eigen(summary.bottom)
    trace = _trace(summary.trace.value, summary.trace.stderr)
    if t.max_eigenvalue is not None:
        items.append(_at_most("max-eigenvalue", "lambda_max", None, t.max_eigenvalue, top))
    if t.stability_lr is not None:
        limit = 2 / t.stability_lr
        margin = limit - top.value
        passed = top.trusted and margin + top.allowance > 0
        items.append(
            CheckItem(
                "stability-lr",
                "lambda_max",
                None,
                "<",
                limit,
                top.value,
                0.0,
                top.allowance,
                margin,
                passed,
            )
        )
    if t.min_eigenvalue is not None:
        margin = bottom.value - t.min_eigenvalue
        passed = bottom.trusted and margin + bottom.allowance >= 0
        items.append(
            CheckItem(
                "min-eigenvalue",
                "lambda_min",
                None,
                ">=",
                t.min_eigenvalue,
                bottom.value,
                0.0,
                bottom.allowance,
                margin,
                passed,
            )
        )
    if t.max_trace is not None:
        items.append(_at_most("max-trace", "trace", None, t.max_trace, trace))
    if t.max_layer_trace is not None:
        for name, layer in layers.items():
            measured = _trace(layer.trace.value, layer.trace.stderr)
            items.append(_at_most("max-layer-trace", "trace", name, t.max_layer_trace, measured))
    return items


def _load_baseline(path: Path) -> dict[str, Any]:
    """The ``summary`` and ``layers`` of a previous report/check JSON (checked before a run)."""
    fix = "write one with 'hesscli report --json -o FILE' (or check --json)"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"baseline {path} does not exist", fix) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"baseline {path} is not a JSON document ({exc})", fix) from None
    results = document.get("results") if isinstance(document, dict) else None
    if document.get("command") not in ("report", "check") or not isinstance(results, dict):
        raise ConfigError(f"baseline {path} is not the JSON of hesscli report or check", fix)
    try:
        summary, layers = results["summary"], results["layers"]
        for key in ("top", "bottom", "trace"):
            float(summary[key]["value"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"baseline {path} lacks results.summary values", fix) from None
    return {"document": document, "summary": summary, "layers": layers}


def _value(entry: dict[str, Any], eigen: bool) -> Measured:
    value = entry["value"]
    value = math.nan if value is None else float(value)
    if eigen:
        return Measured(value, 0.0, float(entry.get("residual") or 0.0), bool(entry["converged"]))
    stderr = float(entry.get("stderr") or 0.0)
    return _trace(value, stderr)


def _drift(
    quantity: str, layer: str | None, old: Measured, new: Measured, tolerance: float, floor: float
) -> CheckItem:
    """|new − old| ≤ tolerance·max(|old|, floor) + both runs' noise."""
    allowance = tolerance * max(abs(old.value), floor) + math.hypot(old.allowance, new.allowance)
    margin = allowance - abs(new.value - old.value)
    passed = new.trusted and margin >= 0
    return CheckItem(
        "baseline",
        quantity,
        layer,
        "within",
        old.value,
        new.value,
        new.stderr,
        allowance,
        margin,
        passed,
    )


def _against_baseline(
    baseline: dict[str, Any],
    summary: Summary,
    layers: dict[str, LayerSummary],
    tolerance: float,
) -> list[CheckItem]:
    old_summary, old_layers = baseline["summary"], baseline["layers"]
    floor = FLOOR * abs(float(old_summary["top"]["value"]))

    def drift(quantity: str, layer: str | None, old: Measured, new: Measured) -> CheckItem:
        return _drift(quantity, layer, old, new, tolerance, floor)

    items = [
        drift("lambda_max", None, _value(old_summary["top"], True), _eigen(summary.top)),
        drift("lambda_min", None, _value(old_summary["bottom"], True), _eigen(summary.bottom)),
        drift(
            "trace",
            None,
            _value(old_summary["trace"], False),
            _trace(summary.trace.value, summary.trace.stderr),
        ),
    ]
    for name, layer in layers.items():
        old = old_layers[name]
        trace = _trace(layer.trace.value, layer.trace.stderr)
        items.append(drift("trace", name, _value(old["trace"], False), trace))
        items.append(drift("lambda_max", name, _value(old["top"], True), _eigen(layer.top)))
    return items


def _same_problem(baseline: dict[str, Any], path: Path, layers: list[str], curvature: str) -> None:
    document = baseline["document"]
    old_layers = list(baseline["layers"])
    if sorted(old_layers) != sorted(layers):
        raise ConfigError(
            f"baseline {path} covers layers {', '.join(old_layers)}; this run {', '.join(layers)}",
            "select the same layers (--layer) as the baseline run",
        )
    old_curvature = document.get("settings", {}).get("curvature")
    if old_curvature != curvature:
        raise ConfigError(
            f"baseline {path} measured the {old_curvature}; this run the {curvature}",
            f"pass --curvature {old_curvature}",
        )


def run_check(
    request: Request,
    *,
    layer_patterns: list[str],
    thresholds: Thresholds,
    baseline: Path | None = None,
    tolerance: float = 0.05,
    settings: ReportSettings = DEFAULTS,
    progress: Progress = quiet,
    announce: Announce = silent,
) -> Report:
    """Measure, then compare with every threshold and the baseline (``results.passed``)."""
    if not thresholds.any() and baseline is None:
        raise ConfigError(
            "check has nothing to check",
            "give a threshold (--max-eigenvalue, --min-eigenvalue, --max-trace, "
            "--max-layer-trace, --stability-lr) or --baseline FILE.json",
        )
    if thresholds.stability_lr is not None and thresholds.stability_lr <= 0:
        raise ConfigError(
            f"--stability-lr must be positive, got {thresholds.stability_lr}",
            "pass the learning rate of the training run",
        )
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ConfigError(f"--tolerance must be ≥ 0, got {tolerance}", "pass e.g. 0.05")
    if settings.lr is None and thresholds.stability_lr is not None:
        settings = replace(settings, lr=thresholds.stability_lr)
    check_report_settings(settings)
    base = _load_baseline(baseline) if baseline is not None else None
    prepared = prepare(request, layer_patterns=layer_patterns)
    if base is not None and baseline is not None:
        curvature = str(prepared.settings["curvature"].value).lower()
        trainable = {n for n, p in prepared.problem.model.named_parameters() if p.requires_grad}
        names = [x.name for x in prepared.layers if any(p in trainable for p in x.parameters)]
        _same_problem(base, baseline, names, curvature)
    found, cost = measure_all(prepared, settings, progress=progress, announce=announce)
    items = _thresholds(thresholds, found.summary, found.layers)
    if base is not None:
        items += _against_baseline(base, found.summary, found.layers, tolerance)
    results = CheckResults(
        passed=all(item.passed for item in items),
        checks=items,
        baseline=None if baseline is None else str(baseline),
        tolerance=tolerance if baseline is not None else None,
        summary=found.summary,
        layers=found.layers,
        flags=found.flags,
        engine=found.engine,
    )
    options = {
        **report_options(settings),
        **vars(thresholds),
        "baseline": results.baseline,
        "tolerance": results.tolerance,
    }
    report = report_for("check", prepared, results, cost, options)
    files = (*report.input_files, str(baseline)) if baseline is not None else report.input_files
    return replace(report, input_files=files)
