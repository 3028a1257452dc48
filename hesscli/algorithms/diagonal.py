"""The diagonal of a symmetric operator: exact from unit columns, or estimated, and its statistics.

Exact: diag(C)ᵢ = (C·eᵢ)ᵢ, with the unit columns pushed through the matmat in blocks (one data
pass per block of columns, P products in all) — the batched form of the element-by-element
double-backward loop. Estimated: Diag++ (:mod:`.sketch`): exact low-rank part plus Rademacher
probes of the deflated remainder, with a standard error for every entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hesscli.algorithms import Matmat
from hesscli.algorithms.segments import Segments
from hesscli.algorithms.sketch import DeflatedProbing

#: Probes of the remainder at least (so that a standard error means something).
MIN_PROBES = 8


@dataclass(frozen=True)
class DiagonalEstimate:
    """diag(C) with a standard error per entry (zeros when exact).

    Attributes:
        values: ``(P,)`` float64.
        stderr: ``(P,)`` float64 standard errors.
        exact: Computed exactly (no random probes).
        products: Products spent.
        probes: Random probes of the remainder (0 when exact).
        sketch: Sketch columns of the exact low-rank part.
        block_base: ``(S,)`` per-block sums of the exact low-rank part (estimates only).
        block_samples: ``(S, probes)`` per-block sums of every probe's samples: with
            ``block_base``, the Hutch++ traces of the blocks from the same probes.
    """

    values: torch.Tensor
    stderr: torch.Tensor
    exact: bool
    products: int
    probes: int = 0
    sketch: int = 0
    block_base: torch.Tensor | None = None
    block_samples: torch.Tensor | None = None


def exact_diagonal(
    matmat: Matmat,
    size: int,
    *,
    columns: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> DiagonalEstimate:
    """diag(C) from the unit columns, ``columns`` at a time (P products)."""
    device = torch.device(device)
    values = torch.empty(size, dtype=torch.float64, device=device)
    for start in range(0, size, columns):
        stop = min(start + columns, size)
        rows = torch.arange(start, stop, device=device)
        unit = torch.zeros(size, stop - start, dtype=dtype, device=device)
        unit[rows, rows - start] = 1
        image = matmat(unit)
        values[start:stop] = image[rows, rows - start].double()
        if on_step is not None:
            on_step(stop, size)
    return DiagonalEstimate(values, torch.zeros_like(values), exact=True, products=size)


def estimate_diagonal(
    matmat: Matmat,
    size: int,
    *,
    products: int,
    sketch: int | None = None,
    batch: int = 8,
    blocks: Sequence[tuple[int, int]] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
) -> DiagonalEstimate:
    """Diag++ estimate of diag(C) with ``products`` products, and per-entry standard errors.

    Args:
        matmat: ``(P, K) → (P, K)``, symmetric.
        size: P.
        products: Budget; a third goes to the sketch (2k products) unless ``sketch`` is given.
        sketch: k (default ``products // 3`` halved to products, i.e. one third each phase).
        batch: Probes (and sketch columns) per matmat call.
        blocks: ``(start, stop)`` row blocks whose traces to keep from the same probes.
        generator: CPU generator.
        dtype: Dtype of the vectors handed to ``matmat``.
        device: Their device.
        on_step: Called as ``on_step(products_spent, products)``.
    """
    k = products // 3 if sketch is None else sketch
    if products - 2 * k < MIN_PROBES:
        raise ValueError(
            f"a budget of {products} products leaves fewer than {MIN_PROBES} probes after a "
            f"sketch of {k}"
        )
    probing = DeflatedProbing(
        matmat,
        size,
        sketch=k,
        generator=generator,
        dtype=dtype,
        device=torch.device(device),
        columns=batch,
    )
    segments = Segments.of(size, blocks, device=probing.low_rank.device)
    total = torch.zeros(size, dtype=torch.float64, device=probing.low_rank.device)
    squares = torch.zeros_like(total)
    sums: list[torch.Tensor] = []
    count = 0
    while probing.products < products:
        take = min(batch, products - probing.products)
        samples = probing.probe(take)
        sums.append(segments.sum(samples))
        total += samples.sum(dim=1)
        squares += samples.square().sum(dim=1)
        count += take
        if on_step is not None:
            on_step(probing.products, products)
    mean = total / count
    variance = (squares - count * mean.square()).clamp_min(0) / (count - 1)
    return DiagonalEstimate(
        values=probing.low_rank + mean,
        stderr=(variance / count).sqrt(),
        exact=False,
        products=probing.products,
        probes=count,
        sketch=probing.sketch,
        block_base=segments.sum(probing.low_rank[:, None])[:, 0],
        block_samples=torch.cat(sums, dim=1),
    )


@dataclass(frozen=True)
class DiagonalStats:
    """Statistics of one block's diagonal (DESIGN.md's ``diag`` results).

    ``largest`` holds the flat indices (within the block) of the k largest |entries|, largest
    first; the caller maps them to parameter names. ``stderr`` is the root-mean-square standard
    error of the entries (0 when exact).
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
    largest: tuple[tuple[int, float], ...]
    stderr: float


def diagonal_stats(values: torch.Tensor, stderr: torch.Tensor, *, largest: int) -> DiagonalStats:
    """Count, moments, quantiles, fraction negative, sum and the ``largest`` biggest |entries|."""
    v = values.double().flatten().cpu()
    if v.numel() == 0:
        raise ValueError("no entries")
    q = np.quantile(v.numpy(), [0.01, 0.5, 0.99])  # torch.quantile refuses > 2**24 entries
    top = torch.topk(v.abs(), min(largest, v.numel()))
    return DiagonalStats(
        count=v.numel(),
        mean=float(v.mean()),
        std=float(v.std(unbiased=False)),
        min=float(v.min()),
        max=float(v.max()),
        median=float(q[1]),
        p01=float(q[0]),
        p99=float(q[2]),
        fraction_negative=float((v < 0).double().mean()),
        sum=float(v.sum()),
        largest=tuple((int(i), float(v[i])) for i in top.indices),
        stderr=float(stderr.double().square().mean().sqrt()),
    )
