"""Interpretive flags: named, documented thresholds that mark a model or a layer.

WeightWatcher's idea (name what a number means, with a threshold one can look up) applied to
loss curvature. A flag is a hint for a human, never a verdict; ``check`` is the gate. Every rule
below is listed in the README with its threshold; change a threshold here and there together.
"""

from __future__ import annotations

from dataclasses import dataclass

from hesscli.results import Flag, LayerSummary, Summary

#: ``saddle``: the quadrature guarantees at least this fraction of eigenvalues below −1 % of
#: λmax (``significant_negative_mass``).
SADDLE_MASS = 0.01
#: ``negative-curvature`` / ``indefinite``: λmin at or below −this × λmax.
NEGATIVE_RATIO = 0.05
#: ``noisy-trace``: a stochastic trace whose standard error exceeds this fraction of it.
NOISY_TRACE = 0.1
#: ``dominant``: a layer holding at least this fraction of the total trace.
DOMINANT_SHARE = 0.5
#: ``flat``: a layer whose λmax is at most this fraction of the model's λmax.
FLAT_RATIO = 1e-4


@dataclass(frozen=True)
class Rule:
    """A flag's name, what it applies to, and what it means (shown in the README and help)."""

    name: str
    subject: str
    meaning: str


RULES = (
    Rule(
        "saddle",
        "model",
        f"at least {SADDLE_MASS:.0%} of the eigenvalues lie below −1 % of λmax (the lower "
        "quadrature bound, less two standard errors): a saddle region, not a minimum",
    ),
    Rule(
        "negative-curvature",
        "model",
        f"λmin ≤ −{NEGATIVE_RATIO:g}·λmax: a descent direction with a sizeable share of the "
        "sharpest curvature",
    ),
    Rule(
        "sharp",
        "model",
        "λmax > 2/lr (with --lr): gradient descent with that learning rate is unstable along "
        "the top eigenvector (the edge of stability)",
    ),
    Rule(
        "unconverged",
        "model or layer",
        "an eigenvalue's error is above the tolerance: raise --max-steps",
    ),
    Rule(
        "noisy-trace",
        "model",
        f"the trace's standard error exceeds {NOISY_TRACE:.0%} of it: spend more products",
    ),
    Rule(
        "dominant",
        "layer",
        f"the layer holds at least {DOMINANT_SHARE:.0%} of the total trace: the most "
        "sensitive to quantisation and pruning",
    ),
    Rule(
        "indefinite",
        "layer",
        f"the layer's λmin ≤ −{NEGATIVE_RATIO:g}·(its λmax): its own block is far from convex",
    ),
    Rule(
        "flat",
        "layer",
        f"the layer's λmax ≤ {FLAT_RATIO:g}·(the model's λmax): almost no curvature "
        "(dead units, or a safe target for pruning)",
    ),
)


def model_flags(summary: Summary, *, lr: float | None = None) -> list[Flag]:
    """The model-level flags raised by ``summary``."""
    top, bottom, trace = summary.top, summary.bottom, summary.trace
    mass = summary.significant_negative_mass
    flags = []
    if mass.low - 2 * mass.stderr >= SADDLE_MASS:
        flags.append(
            Flag(
                "saddle",
                "model",
                f"mass below −{mass.threshold:.3g} ≥ {mass.low:.3g} (estimate {mass.value:.3g}"
                f" ± {mass.stderr:.1g}) ≥ {SADDLE_MASS:g}",
            )
        )
    if bottom.converged and top.value > 0 and bottom.value <= -NEGATIVE_RATIO * top.value:
        flags.append(
            Flag(
                "negative-curvature",
                "model",
                f"λmin = {bottom.value:.4g} ≤ −{NEGATIVE_RATIO:g} × λmax ({top.value:.4g})",
            )
        )
    if lr is not None and top.value > 2 / lr:
        flags.append(
            Flag("sharp", "model", f"λmax = {top.value:.4g} > 2/lr = {2 / lr:.4g} (lr = {lr:g})")
        )
    if not (top.converged and bottom.converged):
        flags.append(Flag("unconverged", "model", "λmax or λmin did not reach the tolerance"))
    if not trace.exact and trace.stderr > NOISY_TRACE * abs(trace.value):
        flags.append(
            Flag(
                "noisy-trace",
                "model",
                f"trace {trace.value:.4g} ± {trace.stderr:.2g} (more than {NOISY_TRACE:.0%})",
            )
        )
    return flags


def layer_flags(name: str, layer: LayerSummary, summary: Summary, *, layers: int) -> list[Flag]:
    """The flags of one layer, judged against the model's ``summary``.

    ``dominant`` needs at least two layers (a single layer holds all the trace by definition).
    """
    flags = []
    total, top, bottom = summary.trace.value, layer.top, layer.bottom
    if layers > 1 and total > 0 and layer.trace.value >= DOMINANT_SHARE * total:
        share = layer.trace.value / total
        flags.append(Flag("dominant", name, f"{share:.0%} of the total trace"))
    if bottom.converged and top.value > 0 and bottom.value <= -NEGATIVE_RATIO * top.value:
        flags.append(Flag("indefinite", name, f"λmin = {bottom.value:.4g}, λmax = {top.value:.4g}"))
    if summary.top.value > 0 and top.value <= FLAT_RATIO * summary.top.value:
        flags.append(
            Flag("flat", name, f"λmax = {top.value:.3g} vs the model's {summary.top.value:.4g}")
        )
    if not (top.converged and bottom.converged):
        flags.append(Flag("unconverged", name, "the layer's λmax or λmin did not converge"))
    return flags
