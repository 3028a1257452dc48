"""Accuracy of hesscli's eigenvalue density (SLQ) on matrices with a known spectrum.

Usage: ``python benchmarks/density_accuracy.py [--size 2000] [--probes 8] [--steps 80]``

A network-like spectrum (a bulk around zero with a negative part, plus outliers) is hidden in
a random orthogonal basis; the density is computed from products only, as ``hesscli density``
does with its defaults, and compared with the exact eigenvalues: moments, mass below
thresholds (with the quadrature bracket and the probes' standard error), and the L1 distance
of the smoothed curves.
"""

from __future__ import annotations

import argparse
import math

import torch

from hesscli.algorithms.density import (
    default_sigma,
    grid_for,
    mass_below,
    mass_bracket,
    moment,
    smoothed,
    spectral_quadrature,
)

F64 = torch.float64


def spectrum(size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    bulk = torch.randn(size - 20, generator=g, dtype=F64) * 0.3 + 0.15
    outliers = torch.logspace(0.5, 1.7, 20, dtype=F64)
    return torch.cat([bulk, outliers])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    eigenvalues = spectrum(args.size, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    basis, _ = torch.linalg.qr(torch.randn(args.size, args.size, generator=g, dtype=F64))
    a = basis @ torch.diag(eigenvalues) @ basis.T
    (q,) = spectral_quadrature(
        lambda v: a @ v,
        args.size,
        probes=args.probes,
        steps=args.steps,
        generator=torch.Generator().manual_seed(args.seed),
        dtype=F64,
    )
    print(f"P = {args.size}, {args.probes} probes × {args.steps} steps")
    print("moment  exact        SLQ ± stderr              |error|/stderr")
    for j in (1, 2, 3):
        value, stderr = moment(q, j)
        exact = float(eigenvalues.pow(j).mean())
        ratio = abs(value - exact) / stderr
        print(f"  {j}     {exact:<12.5g} {value:.5g} ± {stderr:<10.2g}   {ratio:.2f}")
    print("mass below t   exact    SLQ ± stderr        bracket")
    for t in (-0.3, 0.0, 0.3, 1.0, 10.0):
        exact = float((eigenvalues < t).double().mean())
        value, stderr = mass_below(q, t)
        low, high = mass_bracket(q, t)
        print(f"  {t:<6g}       {exact:.4f}   {value:.4f} ± {stderr:.4f}   [{low:.4f}, {high:.4f}]")
    for factor in (1, 5, 20):
        sigma = factor * default_sigma(q)
        grid = grid_for(q, sigma, 4000)
        density, _ = smoothed(q, grid, sigma)
        offsets = (grid[None, :] - eigenvalues[:, None]) / sigma
        exact = (torch.exp(-0.5 * offsets.square()) / (sigma * math.sqrt(2 * math.pi))).mean(0)
        l1 = float((density - exact).abs().sum() * (grid[1] - grid[0]))
        print(f"smoothed density, σ = {sigma:.3g}: L1 distance to the exact curve {l1:.3f}")


if __name__ == "__main__":
    main()
