"""``hesscli check``: thresholds and a baseline regression gate over the report's numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hesscli.analysis import Request
from hesscli.diagnostics import Progress, _quiet
from hesscli.overview import DEFAULTS, Announce, ReportSettings, _silent
from hesscli.results import Report


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


def run_check(
    request: Request,
    *,
    layer_patterns: list[str],
    thresholds: Thresholds,
    baseline: Path | None = None,
    tolerance: float = 0.05,
    settings: ReportSettings = DEFAULTS,
    progress: Progress = _quiet,
    announce: Announce = _silent,
) -> Report:
    """Measure, then compare with every threshold and the baseline (``results.passed``)."""
    raise NotImplementedError
