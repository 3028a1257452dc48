"""Traces of a symmetric operator and of its diagonal blocks (layers), from the same probes.

Methods:
- **exact**: the sum of the exact diagonal (P unit-column products) — used when P is at most
  what the estimator would spend anyway.
- **Hutch++** (Meyer et al. 2021, see :mod:`.sketch`): exact trace of the low-rank part captured
  by a k-column sketch, plus Hutchinson probes of the deflated remainder; k = 0 is plain
  Hutchinson (1990). Block l's trace is the sum of the same per-entry samples over its rows, so
  every layer's trace costs no product beyond the global one.

Probes are added in batches until the global standard error is at most ``target`` × |trace| or
the ``products`` budget is spent (``stopped`` says which). The standard error is the sample
standard deviation of the probe values over √probes; ``interval`` is the two-sided 95 % half
width with Student's t for probes − 1 degrees of freedom. Example (prescribed diagonal)::

    >>> import torch
    >>> A = torch.diag(torch.linspace(0, 2, 400, dtype=torch.float64))
    >>> t = estimate_trace(lambda V: A @ V, 400, products=64, target=None, sketch=8,
    ...                    generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> t.stopped, t.products, abs(t.total.value - 400.0) < 4 * t.total.stderr
    ('budget', 64, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.diagonal import MIN_PROBES, exact_diagonal
from hesscli.algorithms.segments import Segments
from hesscli.algorithms.sketch import DeflatedProbing

#: Two-sided 95 % quantiles of Student's t for 1..10 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
_Z975 = 1.959964


def t_quantile_975(dof: int) -> float:
    """Student's t 97.5 % quantile (table to 10 dof, then the Cornish–Fisher series)."""
    if dof < 1:
        return math.inf
    if dof <= len(_T975):
        return _T975[dof - 1]
    z, n = _Z975, float(dof)
    return (
        z
        + (z**3 + z) / (4 * n)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * n**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * n**3)
    )


@dataclass(frozen=True)
class TraceEstimate:
    """A trace with its standard error and 95 % interval half-width (both 0 when exact)."""

    value: float
    stderr: float
    exact: bool
    interval: float = 0.0


@dataclass(frozen=True)
class Traces:
    """Global and per-block traces from one run.

    Attributes:
        total: Tr(C).
        blocks: Tr(C_ll) per block, in order (they sum to ``total``).
        method: ``"exact"``, ``"hutchinson"`` or ``"hutch++"``.
        stopped: ``"exact"``, ``"target"`` (standard error reached) or ``"budget"``.
        products: Products spent.
        probes: Random probes of the remainder.
        sketch: Sketch columns.
    """

    total: TraceEstimate
    blocks: tuple[TraceEstimate, ...]
    method: str
    stopped: str
    products: int
    probes: int = 0
    sketch: int = 0


def traces_from_diagonal(
    diagonal: torch.Tensor, *, blocks: Sequence[tuple[int, int]] | None = None, products: int
) -> Traces:
    """Exact traces: sums of an exact diagonal over every block and over everything."""
    segments = Segments.of(diagonal.shape[0], blocks, device=diagonal.device)
    sums = segments.sum(diagonal[:, None])[:, 0].tolist()
    return Traces(
        total=TraceEstimate(float(diagonal.double().sum()), 0.0, True),
        blocks=tuple(TraceEstimate(s, 0.0, True) for s in sums),
        method="exact",
        stopped="exact",
        products=products,
    )


def exact_trace(
    matmat: Matmat,
    size: int,
    *,
    blocks: Sequence[tuple[int, int]] | None = None,
    columns: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> Traces:
    """Exact traces from the unit columns (P products)."""
    diag = exact_diagonal(
        matmat, size, columns=columns, dtype=dtype, device=device, on_step=on_step
    )
    return traces_from_diagonal(diag.values, blocks=blocks, products=diag.products)


def _estimate(values: torch.Tensor, base: float) -> TraceEstimate:
    """Mean and standard error of probe values, shifted by the exact low-rank part."""
    count = values.numel()
    stderr = float(values.std(unbiased=True)) / math.sqrt(count) if count > 1 else math.inf
    return TraceEstimate(
        base + float(values.mean()), stderr, False, t_quantile_975(count - 1) * stderr
    )


def estimate_trace(
    matmat: Matmat,
    size: int,
    *,
    products: int | None = 1000,
    target: float | None = 0.01,
    sketch: int | None = None,
    batch: int = 8,
    blocks: Sequence[tuple[int, int]] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> Traces:
    """Hutch++ traces of C and of its blocks, stopping on a target or a budget.

    Args:
        matmat: ``(P, K) → (P, K)``, symmetric (the full operator: block traces are read off
            its products).
        size: P.
        products: Budget including the sketch (``None``: no budget; then ``target`` is needed).
        target: Stop once the global standard error ≤ ``target`` × |trace| (``None``: spend
            the budget).
        sketch: k sketch columns (default: a third of the budget when only a budget is set,
            else 16; 0 gives plain Hutchinson).
        batch: Probes (and sketch columns) per matmat call (one data pass each).
        blocks: ``(start, stop)`` row blocks (layers).
        generator: CPU generator.
        dtype: Dtype of the vectors handed to ``matmat``.
        device: Their device.
        on_step: Called as ``on_step(products_spent, budget)``.
    """
    if products is None and target is None:
        raise ValueError("give a product budget, a target relative error, or both")
    if target is not None and target <= 0:
        raise ValueError(f"the target relative error must be positive, got {target}")
    if sketch is None:
        sketch = products // 3 if target is None and products is not None else 16
    sketch = min(sketch, size)
    if products is not None and products - 2 * sketch < MIN_PROBES:
        raise ValueError(
            f"a budget of {products} products leaves fewer than {MIN_PROBES} probes after a "
            f"sketch of {sketch} columns (2×{sketch} products)"
        )
    device = torch.device(device)
    segments = Segments.of(size, blocks, device=device)
    probing = DeflatedProbing(
        matmat,
        size,
        sketch=sketch,
        generator=generator,
        dtype=dtype,
        device=device,
        columns=batch,
    )
    base = segments.sum(probing.low_rank[:, None])[:, 0]
    samples: list[torch.Tensor] = []  # (S, count) per batch
    budget = math.inf if products is None else products
    stopped = "budget"
    while probing.products < budget:
        take = int(min(batch, budget - probing.products))
        samples.append(segments.sum(probing.probe(take)))
        if on_step is not None:
            on_step(probing.products, int(min(budget, 10**9)))
        per_block = torch.cat(samples, dim=1)
        total = _estimate(per_block.sum(dim=0), float(base.sum()))
        if (
            target is not None
            and per_block.shape[1] >= MIN_PROBES
            and total.stderr <= target * abs(total.value)
        ):
            stopped = "target"
            break
    return traces_from_probes(
        base,
        torch.cat(samples, dim=1),
        stopped=stopped,
        products=probing.products,
        sketch=probing.sketch,
    )


def traces_from_probes(
    base: torch.Tensor, samples: torch.Tensor, *, stopped: str, products: int, sketch: int
) -> Traces:
    """Hutch++ traces from per-block sums of the same probes.

    ``base`` ``(S,)`` holds the blocks' exact low-rank parts, ``samples`` ``(S, probes)`` their
    probe values; the whole is their sum over blocks.
    """
    return Traces(
        total=_estimate(samples.sum(dim=0), float(base.sum())),
        blocks=tuple(_estimate(samples[s], float(base[s])) for s in range(samples.shape[0])),
        method="hutch++" if sketch else "hutchinson",
        stopped=stopped,
        products=products,
        probes=samples.shape[1],
        sketch=sketch,
    )
