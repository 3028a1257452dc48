"""Results of ``spectrum``, ``trace``, ``diag`` and ``density``, and the estimates they share.

Eigenvalues with residuals, traces with standard errors, diagonal statistics, negative masses
and densities: the building blocks that the overview commands (hesscli.results.overview) also
report, and the products' route (:class:`Engine`) every curvature result names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Engine:
    """How the curvature products were computed: the route and why it was chosen."""

    route: str
    reason: str
    #: Estimated relative error of the products (0 for the exact routes).
    error: float = 0.0
    #: How attention was computed, when the model uses scaled_dot_product_attention.
    attention: str = ""


@dataclass(frozen=True)
class Eigenvalue:
    """One eigenvalue: its residual ‖Cy − λy‖, its error and whether it met the tolerance.

    The residual is a guarantee (some eigenvalue lies within it, Bauer–Fike); the error is the
    estimate ‖r‖²/gap of the distance to it (at most the residual), which ``converged`` judges
    against the tolerance.
    """

    value: float
    residual: float
    error: float
    converged: bool


@dataclass(frozen=True)
class Spectrum:
    """Extreme eigenvalues of one operator (the whole model or one layer's block).

    ``steps`` is the number of Lanczos steps; ``exact`` means the Krylov space became invariant,
    so the values are exact eigenvalues to round-off.
    """

    top: list[Eigenvalue]
    bottom: list[Eigenvalue]
    steps: int
    exact: bool
    parameters: int


@dataclass(frozen=True)
class SpectrumResults:
    """Results of ``hesscli spectrum``: the whole model's and (``--per-layer``) each layer's."""

    top: list[Eigenvalue]
    bottom: list[Eigenvalue]
    steps: int
    exact: bool
    tolerance: float
    layers: dict[str, Spectrum]
    engine: Engine


@dataclass(frozen=True)
class Trace:
    """A trace, its standard error and the 95 % interval half-width (0 and 0 when exact)."""

    value: float
    stderr: float
    exact: bool
    interval: float
    parameters: int


@dataclass(frozen=True)
class TraceResults:
    """Results of ``hesscli trace``: Tr(C) and every layer's Tr(C_ll), from the same probes.

    ``stopped`` says what ended the estimate: ``exact``, ``target`` (the standard error reached
    ``target`` × |trace|) or ``budget`` (``products`` spent).
    """

    trace: Trace
    layers: dict[str, Trace]
    method: str
    stopped: str
    probes: int
    sketch: int
    target: float | None
    budget: int | None
    engine: Engine


@dataclass(frozen=True)
class DiagonalEntry:
    """One diagonal entry: parameter name, index within that tensor, value."""

    parameter: str
    index: list[int]
    value: float


@dataclass(frozen=True)
class DiagonalSummary:
    """Statistics of one layer's diagonal, as in DESIGN.md, and how it was obtained.

    ``stderr`` is the root-mean-square standard error of the entries (0 when exact).
    """

    count: int
    mean: float
    std: float
    min: float
    max: float
    median: float
    p01: float
    p99: float
    fraction_negative: float
    sum: float
    exact: bool
    stderr: float
    method: str
    largest: list[DiagonalEntry]


@dataclass(frozen=True)
class DiagonalResults:
    """Results of ``hesscli diag``: one summary per layer."""

    layers: dict[str, DiagonalSummary]
    engine: Engine


@dataclass(frozen=True)
class Mass:
    """A fraction of the eigenvalues, with its standard error over the probe vectors.

    ``threshold``: eigenvalues below −threshold count (round-off makes a positive
    semi-definite spectrum dip to about −ε‖C‖; those are not negative curvature). ``low`` and
    ``high`` bound what the quadrature cannot resolve (Chebyshev–Markov–Stieltjes): the
    expected fraction lies between them whatever the spectrum; ``stderr`` is the probes' spread.
    """

    value: float
    stderr: float
    threshold: float
    low: float
    high: float


@dataclass(frozen=True)
class Density:
    """Eigenvalue density of one operator by stochastic Lanczos quadrature.

    ``density`` is the Gaussian-smoothed quadrature measure on ``grid``: it integrates to 1
    (fraction of the eigenvalues per unit of λ); ``stderr`` is its standard error over the
    probes. ``nodes`` and ``weights`` are each probe's Gauss quadrature (Ritz values of its
    Lanczos tridiagonal and the squared first components of their eigenvectors).
    ``negative_mass`` counts eigenvalues below round-off (−tol·‖C‖);
    ``significant_negative_mass`` those below −1 % of the largest Ritz value (the ``saddle``
    flag's measure: a trained network's bulk of tiny negative eigenvalues does not count).
    """

    grid: list[float]
    density: list[float]
    stderr: list[float]
    sigma: float
    probes: int
    steps: int
    nodes: list[list[float]]
    weights: list[list[float]]
    negative_mass: Mass
    significant_negative_mass: Mass
    parameters: int


@dataclass(frozen=True)
class DensityResults(Density):
    """Results of ``hesscli density``: the selection's density, and each layer's with --per-layer.

    The inherited fields are the whole selection's. ``top``/``bottom`` are the extreme Ritz
    values of the first probe's Lanczos run (marked on plots), with residuals bounded from the
    recurrence (no more products); ``trace`` is the probes' Hutchinson estimate (the first
    moment of the quadrature, times P).
    """

    top: list[Eigenvalue]
    bottom: list[Eigenvalue]
    trace: Trace
    layers: dict[str, Density]
    engine: Engine
