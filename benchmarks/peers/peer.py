"""One peer measurement in its own process, for ``benchmarks/scale.py``.

    python benchmarks/peers/peer.py TASK --problem mlp|minilm [--folder DIR]

Imports the tool, loads the model, checkpoint and batch (``problems.load``), runs one task and
prints one JSON line: ``seconds`` (the tool's own work, from its construction to its answer,
after the imports and the loading: what hesscli's ``cost.seconds`` counts), ``products``
(Hessian-vector products, counted by wrapping the function or method each tool multiplies
with), ``value`` (λmax, or the trace), ``kind`` (``lambda`` or ``trace``), ``values``, ``note``
(the settings the tool ran at). scale.py times the whole process around it.

PyHessian is GPL: it is imported and called, never copied.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import problems  # this folder: sys.path[0] when run as a script
import torch

warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
TOL = 1e-4  # requested accuracy of the Lanczos / ARPACK peers (hesscli's float32 default)
TRACE_PRODUCTS = 99  # Hutch++ budget of curvlinops and hessian-eigenthings (divisible by 3)
DENSITY_STEPS = 100  # Lanczos steps of the density peers: PyHessian's default, one probe
LANCZOS_STEPS = {1: 40, 5: 50}  # hessian-eigenthings: its default, 2k steps, does not converge
Loaded = tuple[torch.nn.Module, Any, torch.Tensor, Any]
Load = Callable[[], Loaded]


def batch_size(inputs: Any) -> int:
    """Samples in a batch of inputs: a tensor, or MiniLM's dictionary of tensors."""
    if isinstance(inputs, dict):
        return len(next(iter(inputs.values())))
    return len(inputs)


def gradient(load: Load) -> dict[str, Any]:
    """One gradient (forward + backward, plain autograd), then three more: the time unit."""
    model, x, y, criterion = load()
    params = problems.parameters(model)
    seconds = []
    for _ in range(4):
        start = time.perf_counter()
        loss = criterion(model(x), y)
        torch.autograd.grad(loss, params)
        seconds.append(time.perf_counter() - start)
    unit = statistics.median(seconds[1:])
    return {
        "seconds": seconds[0],
        "unit": unit,
        "products": 0,
        "value": float(loss.detach()),
        "kind": "loss",
        "note": f"first {seconds[0]:.3g} s, then median of 3: {unit:.3g} s",
    }


def _pyhessian(load: Load) -> tuple[Any, list[int], float]:
    """PyHessian's ``hessian`` on the batch (its construction timed), products counted."""
    import pyhessian

    # The package's ``hessian`` attribute is the class, which hides the module of that name.
    module = sys.modules[pyhessian.hessian.__module__]
    model, x, y, criterion = load()
    count = [0]
    original = module.hessian_vector_product

    def counted(*args: Any) -> Any:
        count[0] += 1
        return original(*args)

    module.hessian_vector_product = counted  # eigenvalues/trace/density call it by this name
    torch.manual_seed(0)  # its random start vectors: the same products in every run
    start = time.perf_counter()
    return module.hessian(model, criterion, data=(x, y), cuda=False), count, start


def pyhessian_top(k: int) -> Callable[[Load], dict[str, Any]]:
    """``hessian(...).eigenvalues(top_n=k)`` at its defaults."""

    def run(load: Load) -> dict[str, Any]:
        h, count, start = _pyhessian(load)
        values, _ = h.eigenvalues(top_n=k)
        seconds = time.perf_counter() - start
        values = sorted((float(v) for v in values), reverse=True)
        return {
            "seconds": seconds,
            "products": count[0],
            "value": values[0],
            "values": values,
            "kind": "lambda",
            "note": "power iteration with deflation, maxIter 100, tol 1e-3 (defaults)",
        }

    return run


def pyhessian_trace(load: Load) -> dict[str, Any]:
    """``hessian(...).trace()`` at its defaults (Hutchinson until the mean moves < 0.1 %)."""
    h, count, start = _pyhessian(load)
    samples = h.trace()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "products": count[0],
        "value": float(statistics.fmean(samples)),
        "kind": "trace",
        "note": "Hutchinson, maxIter 100, tol 1e-3 (defaults)",
    }


def _eig(matrix: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in for ``torch.eig`` (removed in torch 2.0) on a symmetric matrix.

    Returns what it returned: eigenvalues as ``(n, 2)`` real and imaginary parts, and the
    eigenvectors as columns.
    """
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def pyhessian_density(load: Load) -> dict[str, Any]:
    """``hessian(...).density()`` at its defaults (one probe, 100 Lanczos steps)."""
    try:
        torch.eig(torch.eye(1), eigenvectors=True)
        shimmed = False
    except (AttributeError, RuntimeError):  # torch ≥ 2 keeps a stub that raises
        torch.eig = _eig  # PyHessian's density calls it
        shimmed = True
    h, count, start = _pyhessian(load)
    nodes, _ = h.density()
    seconds = time.perf_counter() - start
    flat = [float(v) for run in nodes for v in run]
    return {
        "seconds": seconds,
        "products": count[0],
        "value": max(flat),
        "kind": "lambda",
        "note": "SLQ, 1 probe × 100 steps (defaults), largest node"
        + (" (torch.eig shimmed by eigh)" if shimmed else ""),
    }


def _curvlinops(load: Load) -> tuple[Any, float]:
    """The curvlinops ``HessianLinearOperator`` (default determinism check), products counted."""
    from curvlinops import HessianLinearOperator

    class Counting(HessianLinearOperator):
        products = 0

        def _matmat(self, M: list[torch.Tensor]) -> list[torch.Tensor]:
            self.products += M[0].shape[-1]
            return super()._matmat(M)

    model, x, y, criterion = load()
    start = time.perf_counter()
    params = problems.parameters(model)
    op = Counting(model, criterion, params, [(x, y)], batch_size_fn=batch_size)
    return op, start


def curvlinops_top(k: int) -> Callable[[Load], dict[str, Any]]:
    """SciPy's ``eigsh(k, which="LA", tol=1e-4)`` on curvlinops' operator (``to_scipy()``)."""

    def run(load: Load) -> dict[str, Any]:
        import numpy as np
        from scipy.sparse.linalg import eigsh

        op, start = _curvlinops(load)
        v0 = np.random.default_rng(0).standard_normal(op.shape[0]).astype(np.float32)
        found = eigsh(op.to_scipy(), k=k, which="LA", tol=TOL, v0=v0, return_eigenvectors=False)
        seconds = time.perf_counter() - start
        values = sorted((float(v) for v in found), reverse=True)
        return {
            "seconds": seconds,
            "products": op.products,
            "value": values[0],
            "values": values,
            "kind": "lambda",
            "note": f"ARPACK eigsh, tol {TOL:g} (relative, on the eigenvalues), fixed start",
        }

    return run


def curvlinops_trace(load: Load) -> dict[str, Any]:
    """The curvlinops ``hutchpp_trace(op, 99)`` (one block of 33 columns per phase)."""
    from curvlinops import hutchpp_trace

    op, start = _curvlinops(load)
    torch.manual_seed(0)
    value = float(hutchpp_trace(op, TRACE_PRODUCTS))
    return {
        "seconds": time.perf_counter() - start,
        "products": op.products,
        "value": value,
        "kind": "trace",
        "note": f"Hutch++, {TRACE_PRODUCTS} products in 3 blocks of {TRACE_PRODUCTS // 3} columns",
    }


def backpack_diag(load: Load) -> dict[str, Any]:
    """BackPACK's ``DiagHessian`` of the whole model (exact), as an extended ``nn.Sequential``."""
    from backpack import backpack, extend
    from backpack.extensions import DiagHessian

    model, x, y, criterion = load()
    if not isinstance(model, problems.MLP):
        raise SystemExit("BackPACK needs the model as a sequence of its supported layers")
    start = time.perf_counter()
    sequential = extend(torch.nn.Sequential(*model))
    loss = extend(criterion)(sequential(x), y)
    with backpack(DiagHessian()):
        loss.backward()
    seconds = time.perf_counter() - start
    first = sum(float(p.diag_h.sum()) for p in sequential[0].parameters())
    return {
        "seconds": seconds,
        "products": 0,
        "value": sum(float(p.diag_h.sum()) for p in sequential.parameters()),
        "kind": "trace",
        "layer_sum": first,
        "note": f"exact diagonal of every layer; its sum (layer 0: {first:.6g})",
    }


def _eigenthings(load: Load) -> tuple[Any, list[int], float]:
    """hessian-eigenthings' ``HessianOperator`` on the one batch, products counted."""
    from hessian_eigenthings import HessianOperator, supervised_loss

    model, x, y, criterion = load()
    start = time.perf_counter()
    op = HessianOperator(model, [(x, y)], supervised_loss(criterion))
    count = [0]
    original = op.matvec

    def counted(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return original(v)

    op.matvec = counted  # its algorithms call operator.matvec
    return op, count, start


def eigenthings_top(k: int) -> Callable[[Load], dict[str, Any]]:
    """``lanczos(op, k, which="LA", max_iter=…, tol=1e-4)`` (fully reorthogonalised)."""

    def run(load: Load) -> dict[str, Any]:
        from hessian_eigenthings import lanczos

        op, count, start = _eigenthings(load)
        steps = LANCZOS_STEPS[k]
        found = lanczos(op, k=k, max_iter=steps, which="LA", tol=TOL, seed=0)
        seconds = time.perf_counter() - start
        values = [float(v) for v in found.eigenvalues]
        converged = [bool(c) for c in found.converged]
        return {
            "seconds": seconds,
            "products": count[0],
            "value": max(values),
            "values": sorted(values, reverse=True),
            "converged": all(converged),
            "kind": "lambda",
            "note": f"Lanczos, {steps} steps (default 2k={2 * k}), residual ≤ {TOL:g}·|λ|: "
            f"{sum(converged)}/{k} converged",
        }

    return run


def eigenthings_trace(load: Load) -> dict[str, Any]:
    """``hutch_plus_plus(op, num_matvecs=99)``: one product at a time."""
    from hessian_eigenthings import hutch_plus_plus

    op, count, start = _eigenthings(load)
    found = hutch_plus_plus(op, num_matvecs=TRACE_PRODUCTS, seed=0)
    return {
        "seconds": time.perf_counter() - start,
        "products": count[0],
        "value": float(found.estimate),
        "stderr": float(found.stderr),
        "kind": "trace",
        "note": f"Hutch++, {TRACE_PRODUCTS} products (default 99), stderr {found.stderr:.2g}",
    }


def eigenthings_density(load: Load) -> dict[str, Any]:
    """``spectral_density(op, num_runs=1, lanczos_steps=100)``: PyHessian's default work."""
    from hessian_eigenthings import spectral_density

    op, count, start = _eigenthings(load)
    found = spectral_density(op, num_runs=1, lanczos_steps=DENSITY_STEPS, seed=0)
    seconds = time.perf_counter() - start
    nodes = found.raw_eigenvalues[~torch.isnan(found.raw_eigenvalues)]
    return {
        "seconds": seconds,
        "products": count[0],
        "value": float(nodes.max()),
        "kind": "lambda",
        "note": f"SLQ, 1 probe × {DENSITY_STEPS} steps (default 10 × 80), largest node",
    }


TASKS: dict[str, Callable[[Load], dict[str, Any]]] = {
    "gradient": gradient,
    "pyhessian-top1": pyhessian_top(1),
    "pyhessian-top5": pyhessian_top(5),
    "pyhessian-trace": pyhessian_trace,
    "pyhessian-density": pyhessian_density,
    "curvlinops-top1": curvlinops_top(1),
    "curvlinops-top5": curvlinops_top(5),
    "curvlinops-trace": curvlinops_trace,
    "backpack-diag": backpack_diag,
    "eigenthings-top1": eigenthings_top(1),
    "eigenthings-top5": eigenthings_top(5),
    "eigenthings-trace": eigenthings_trace,
    "eigenthings-density": eigenthings_density,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--problem", choices=("mlp", "minilm"), required=True)
    parser.add_argument("--folder", type=Path, default=None, help="the MLP's files")
    args = parser.parse_args()
    result = TASKS[args.task](lambda: problems.load(args.problem, args.folder))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
