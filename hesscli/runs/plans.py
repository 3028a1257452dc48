"""Sizes, tolerances and memory plans that several commands share.

Every phase of a run is inside the memory plan (DESIGN.md): :func:`probing_sizes` (Hutch++ and
Diag++ probes), :func:`basis_plan` (Lanczos bases) and :func:`density_basis` (the density's
bases) cut what an algorithm keeps to the budget and reserve it in the operator's plan. The
defaults that depend on the dtype or the model's size live here too, with
:func:`require_positive` for the numeric options that size a run and :func:`seeded_generator`,
the random source of every probe and start vector (``--seed``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from hesscli.algorithms.lanczos_memory import lanczos_bytes
from hesscli.engine.device_memory import format_size
from hesscli.engine.operator import CurvatureOperator
from hesscli.errors import ConfigError, MemoryLimitError

log = logging.getLogger("hesscli")
#: Default tolerance on an eigenvalue's error relative to ‖C‖, by dtype (≈ what its products
#: allow). A value in a cluster, where no gap sharpens the estimate, needs its residual this
#: small; a separated one is usually far more accurate than its estimate says.
TOLERANCE = {torch.float64: 1e-8, torch.float32: 1e-4}
#: Below −tol·‖C‖ an eigenvalue counts as negative (density's negative mass), by dtype.
ZERO_TOLERANCE = {torch.float64: 1e-7, torch.float32: 1e-4}
#: Lanczos steps at most, unless ``--max-steps`` says otherwise.
MAX_STEPS = 300
#: Keep Lanczos products (exact residuals for free) while they fit in this many bytes.
KEEP_PRODUCTS_BYTES = 1 << 30
#: From this many parameters on a model is of real size: defaults that would take hours there
#: (unit columns, 8 × 80 density probes, 300 Diag++ products) shrink to minutes on a CPU.
LARGE_MODEL = 1_000_000
#: Probes per data pass of the trace and diagonal estimates (fewer when memory is short).
PROBE_BATCH = 8


@dataclass(frozen=True)
class ProbingSizes:
    """Sketch columns and probes per pass that fit the memory plan (see :func:`probing_sizes`)."""

    sketch: int
    batch: int


def probing_sizes(
    op: CurvatureOperator, *, sketch: int, batch: int = PROBE_BATCH, float64_vectors: int = 0
) -> ProbingSizes:
    """The sketch and probe batch of a Hutch++/Diag++ run, cut to what the budget leaves.

    The run keeps the sketch three times at its peak (C·S, its QR factor and QR's workspace,
    then Q and C·Q), a batch of probes four times (probes, deflated, products, samples), and
    ``float64_vectors`` parameter-length float64 accumulators; all of it is reserved in the
    operator's plan, so the graph cache only gets the rest.

    Raises:
        MemoryLimitError: when not even one probe fits.
    """
    vector = op.size * op.dtype.itemsize
    room = (op.spare_bytes() - float64_vectors * op.size * 8) // vector
    batch = max(1, min(batch, room // 8))
    sketch = max(0, min(sketch, (room - 4 * batch) // 3))
    needed = (3 * sketch + 4 * batch) * vector + float64_vectors * op.size * 8
    if room < 4:
        assert op.memory is not None
        raise MemoryLimitError(
            f"the probes need {format_size(needed)} beside the products' "
            f"{format_size(op.memory.estimate)}, more than the {format_size(op.memory.budget)} "
            f"budget ({op.memory.source})",
            "raise --max-memory, or select fewer layers (--layer)",
        )
    op.reserve(needed)
    return ProbingSizes(sketch, batch)


@dataclass(frozen=True)
class BasisPlan:
    """How a Lanczos run fits the memory plan: its basis bound and whether it keeps products."""

    max_basis: int | None
    keep_products: bool

    def search_options(
        self, op: CurvatureOperator, *, top_k: int, bottom_k: int, tol: float
    ) -> dict[str, Any]:
        """The keyword arguments every extreme-eigenvalue search of ``op`` under this plan takes.

        ``spectrum`` and ``report`` (whole model and per layer) pass the same ones, so that the
        same request finds the same eigenvalues in either command.
        """
        return {
            "top_k": top_k,
            "bottom_k": bottom_k,
            "tol": tol,
            "dtype": op.dtype,
            "device": op.device,
            "keep_products": self.keep_products,
            "max_basis": self.max_basis,
        }


def basis_plan(op: CurvatureOperator, *, steps: int, wanted: int, runs: int = 1) -> BasisPlan:
    """The largest Lanczos basis that ``runs`` runs alive together can hold in the budget.

    A run that needs more than fits thick-restarts inside ``max_basis`` vectors (same answers,
    more products); products are kept for free residuals only while they fit too. The bytes
    are reserved in the operator's plan.

    Raises:
        MemoryLimitError: when not even the wanted Ritz vectors and two more fit.
    """
    dtype = op.dtype

    def held(vectors: int, keep: bool) -> int:
        # Ritz vectors are formed only to recompute residuals from kept products.
        ritz = wanted if keep else 0
        return runs * lanczos_bytes(op.size, 1, vectors, dtype, keep, ritz_vectors=ritz)

    spare = op.spare_bytes()
    full = steps + 1
    keep = held(full, True) <= min(spare, runs * KEEP_PRODUCTS_BYTES)
    if keep or held(full, False) <= spare:
        op.reserve(held(full, keep))
        return BasisPlan(None, keep)
    vectors = full
    while vectors > wanted + 2 and held(vectors, False) > spare:
        vectors = max(wanted + 2, vectors * 3 // 4)
    if held(vectors, False) > spare:
        assert op.memory is not None
        raise MemoryLimitError(
            f"Lanczos needs {format_size(held(vectors, False))} for {vectors} vectors beside the "
            f"products' {format_size(op.memory.estimate)}, more than the "
            f"{format_size(op.memory.budget)} budget ({op.memory.source})",
            "raise --max-memory, ask for fewer eigenvalues, or select fewer layers (--layer)",
        )
    op.reserve(held(vectors, False))
    log.info("Lanczos keeps %d vectors (thick restarts beyond them) to fit the budget", vectors)
    return BasisPlan(vectors, False)


def density_basis(op: CurvatureOperator, probes: int, steps: int, runs: int) -> int | None:
    """``max_basis`` of ``runs`` density runs, its bytes reserved in the operator's plan.

    None (full reorthogonalisation) when the bases fit the memory plan, else 2 (the three-term
    recurrence, see :mod:`~hesscli.algorithms.density`).
    """
    full = runs * lanczos_bytes(op.size, probes, steps + 1, op.dtype)
    if full <= op.spare_bytes():
        op.reserve(full)
        return None
    op.reserve(runs * lanczos_bytes(op.size, probes, 2, op.dtype))
    log.info(
        "the density's Lanczos bases (%s) do not fit the budget: no reorthogonalisation",
        format_size(full),
    )
    return 2


def seeded_generator(seed: object) -> torch.Generator:
    """The random source of probes and start vectors: ``--seed`` (0 when unset)."""
    return torch.Generator().manual_seed(int(seed) if seed is not None else 0)


def require_positive(value: float | None, option: str) -> None:
    """Refuse a numeric ``option`` that is given but not positive."""
    if value is not None and value <= 0:
        raise ConfigError(f"{option} must be positive, got {value}", f"pass a positive {option}")
