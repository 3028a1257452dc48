"""Orchestration of ``density``, ``report`` and ``compare``. No printing.

``report`` runs every quantity of the single commands with the same seeds, so its numbers are
theirs, but shares the work: the per-layer traces are sums of the diagonals it computes anyway
(or come from the same Diag++ probes), and the eigenvalue processes of the whole selection and
of every layer advance together with the density's probes, one data pass per Lanczos step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hesscli.analysis import Request
from hesscli.diagnostics import Progress, _quiet
from hesscli.results import Plan, Report

Announce = Callable[[Plan], None]


def _silent(_plan: Plan) -> None:
    return None


@dataclass(frozen=True)
class ReportSettings:
    """What ``report`` (and ``check``, ``compare``) computes.

    Attributes:
        probes: Probe vectors of the density (stochastic Lanczos quadrature).
        steps: Lanczos steps per probe.
        tol: Eigenvalue residual tolerance relative to ‖C‖ (default by dtype).
        max_steps: Lanczos steps at most for the eigenvalues.
        diag_products: Products for Diag++ when a layer's diagonal is estimated.
        lr: Learning rate, for the stability bound 2/lr of the ``sharp`` flag.
        points: Grid points of the smoothed density.
        sigma: Gaussian width of the smoothing (default: a fraction of the spectrum's span).
    """

    probes: int = 8
    steps: int = 80
    tol: float | None = None
    max_steps: int | None = None
    diag_products: int = 300
    lr: float | None = None
    points: int = 400
    sigma: float | None = None


DEFAULTS = ReportSettings()


def run_density(
    request: Request,
    *,
    layer_patterns: list[str],
    probes: int = 8,
    steps: int = 80,
    per_layer: bool = False,
    points: int = 400,
    sigma: float | None = None,
    progress: Progress = _quiet,
) -> Report:
    """The eigenvalue density of the selected layers (and of each with ``per_layer``)."""
    raise NotImplementedError


def run_report(
    request: Request,
    *,
    layer_patterns: list[str],
    settings: ReportSettings = DEFAULTS,
    progress: Progress = _quiet,
    announce: Announce = _silent,
) -> Report:
    """Every quantity, one row per layer, with a summary and flags; ``announce`` gets the plan."""
    raise NotImplementedError


def run_compare(
    request: Request,
    *,
    checkpoints: list[str],
    layer_patterns: list[str],
    settings: ReportSettings = DEFAULTS,
    progress: Progress = _quiet,
    announce: Announce = _silent,
) -> Report:
    """The report's summary, layers and flags for each checkpoint of one model, in order."""
    raise NotImplementedError
