"""``hesscli spectrum``: the top-k and most negative eigenvalues, and per layer.

One Lanczos run over the selected layers (started near the top eigenvectors when the gradient
is free) and, with ``--per-layer``, every layer's run at once through the block-diagonal
product; the bases fit the memory plan (:func:`~hesscli.runs.plans.basis_plan`).
"""

from __future__ import annotations

import time

from hesscli.algorithms.eigen import extreme_eigenvalues
from hesscli.algorithms.ritz import Extremes
from hesscli.errors import ConfigError
from hesscli.results import Report, Spectrum, SpectrumResults
from hesscli.runs.envelope import report_for
from hesscli.runs.outcomes import cost_of, eigenvalues_of, engine_of
from hesscli.runs.plans import MAX_STEPS, TOLERANCE, basis_plan, require_positive, seeded_generator
from hesscli.runs.prepare import Request, operator_for, prepare
from hesscli.runs.progress import Progress, planned, quiet


def _spectrum(extremes: Extremes, parameters: int) -> Spectrum:
    return Spectrum(
        top=eigenvalues_of(extremes.top),
        bottom=eigenvalues_of(extremes.bottom),
        steps=extremes.steps,
        exact=extremes.exhausted,
        parameters=parameters,
    )


def run_spectrum(
    request: Request,
    *,
    layer_patterns: list[str],
    top_k: int = 5,
    bottom_k: int = 1,
    per_layer: bool = False,
    tol: float | None = None,
    max_steps: int | None = None,
    progress: Progress = quiet,
) -> Report:
    """Top-k and most negative eigenvalues of the selected layers' curvature (and per layer)."""
    if top_k < 0 or bottom_k < 0 or top_k + bottom_k == 0:
        raise ConfigError(
            f"--top-k {top_k} --bottom-k {bottom_k} asks for no eigenvalue",
            "ask for at least one (--top-k ≥ 1 or --bottom-k ≥ 1)",
        )
    require_positive(tol, "--tol")
    require_positive(max_steps, "--max-steps")
    start = time.perf_counter()
    prepared = prepare(request, layer_patterns=layer_patterns)
    op = operator_for(prepared)
    tol = tol or TOLERANCE.get(op.dtype, 1e-4)
    limit = min(op.size, max_steps or MAX_STEPS)
    basis = basis_plan(op, steps=limit, wanted=top_k + bottom_k)
    seed = prepared.settings["seed"].value
    common = basis.search_options(op, top_k=top_k, bottom_k=bottom_k, tol=tol)
    # Starts near the top eigenvectors of a trained network, when the gradient is free.
    hint = op.start_gradient()
    (whole,) = extreme_eigenvalues(
        op.matmat,
        op.size,
        max_steps=limit,
        generator=seeded_generator(seed),
        on_step=planned(op, progress, "Lanczos (all selected layers)", limit, 1),
        hint=hint,
        **common,
    )
    layers: dict[str, Spectrum] = {}
    if per_layer:
        blocks = list(op.blocks)
        steps = min(max(b.size for b in blocks), max_steps or MAX_STEPS)
        parts = extreme_eigenvalues(
            op.block_matmat,
            op.size,
            max_steps=steps,
            blocks=[(b.start, b.stop) for b in blocks],
            hint=hint,
            generator=seeded_generator(seed),
            on_step=planned(op, progress, "Lanczos (every layer at once)", steps, len(blocks)),
            **common,
        )
        layers = {b.name: _spectrum(part, b.size) for b, part in zip(blocks, parts, strict=True)}
    results = SpectrumResults(
        top=eigenvalues_of(whole.top),
        bottom=eigenvalues_of(whole.bottom),
        steps=whole.steps,
        exact=whole.exhausted,
        tolerance=tol,
        layers=layers,
        engine=engine_of(op),
    )
    options = {
        "top_k": top_k,
        "bottom_k": bottom_k,
        "per_layer": per_layer,
        "tol": tol,
        "max_steps": limit,
    }
    return report_for("spectrum", prepared, results, cost_of(op, start), options)
