"""Benchmark hesscli's spectral algorithms against PyHessian, curvlinops and BackPACK.

Every tool gets the same model and batch. Tasks: the top-5 eigenvalues, the most negative
eigenvalue, the trace and the diagonal of the Hessian of the mean cross-entropy. Each row gives
the median wall time over ``--repeats`` runs after a warm-up, the Hessian-vector products spent
and the relative error against a reference: the dense float64 Hessian on the small problem; on the
MLP, BackPACK's exact float64 diagonal (trace, diagonal) and float64 Lanczos cross-checked with
float64 ARPACK (eigenvalues).
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from backpack import backpack, extend
from backpack.extensions import DiagHessian
from curvlinops import HessianLinearOperator, hutchpp_trace, xdiag
from engine import (
    Bench,
    begin,
    cpu_ticks,
    median_seconds,
    memory_dataset,
    mlp,
    options,
    others_share,
    print_busy,
    ratio_table,
    sample_problem,
    sync,
    write_json,
)
from pyhessian import hessian as PyHessian  # GPL: imported and called, never copied
from rich.console import Console
from rich.table import Table
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from torch import nn
from torch.nn import functional as F

from hesscli.algorithms.diagonal import exact_diagonal as diagonal_from_columns
from hesscli.algorithms.eigen import extreme_eigenvalues
from hesscli.algorithms.ritz import Extremes
from hesscli.algorithms.trace import estimate_trace
from hesscli.engine.operator import CurvatureOperator

TOL = 1e-4  # requested accuracy of every eigenvalue solver (hesscli: residual ≤ TOL·‖H‖)
TRACE_TARGET = 0.01  # hesscli's trace stops at this relative standard error
HUTCHPP = 48  # curvlinops Hutch++ products
XDIAG = 200  # curvlinops XDiag products
CHECK_ENTRIES = 64  # diagonal entries of the MLP reference checked against unit-vector products
warnings.filterwarnings("ignore", message=".*create_graph=True.*reference cycle")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def small() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``sample_models/digits_mlp`` (3,466 parameters, trained) and its 256 samples.

    Loaded by hesscli's loader, then rebuilt as an ``nn.Sequential`` of the same modules (same
    weights, same function in eval mode), since BackPACK only sees ``nn.Module`` layers.
    """
    model, x, y = sample_problem("digits_mlp", "model.safetensors")
    layers = [model.fc1, nn.Tanh(), model.drop, model.fc2, nn.ReLU(), model.fc3]
    return nn.Sequential(*layers).eval(), x, y


MODELS = {"mlp": mlp, "small": small}


@dataclass
class Outcome:
    """What one run of a tool returned: its answer, its products, whether it met its own rule."""

    value: Any
    products: int | None
    converged: bool | None = None
    note: str = ""
    stderr: float | None = None  # relative standard error, for estimated traces


@dataclass
class Row:
    """One measured tool on one task (``seconds`` None: not run)."""

    tool: str
    task: str
    seconds: float | None
    products: int | None = None
    error: float | None = None
    converged: bool | None = None
    note: str = ""
    stderr: float | None = None  # relative standard error, for estimated traces


@dataclass
class Reference:
    """Exact (or near-exact) answers, in hesscli's layout order, and how each was obtained."""

    top: list[float]
    bottom: float
    trace: float
    layer_traces: list[float]
    diagonal: torch.Tensor
    how: dict[str, str]
    seconds: float


class CountingHessian(HessianLinearOperator):
    """curvlinops' Hessian operator, counting its products (columns), construction checks too."""

    products = 0

    def _matmat(self, M: list[torch.Tensor]) -> list[torch.Tensor]:
        self.products += M[0].shape[-1]
        return super()._matmat(M)


@dataclass
class Counter:
    """A running count."""

    products: int = 0


@contextlib.contextmanager
def pyhessian_products(counter: Counter) -> Iterator[None]:
    """Count PyHessian's products: wrap the ``hessian_vector_product`` its module calls."""
    module = sys.modules["pyhessian.hessian"]
    original = module.hessian_vector_product

    def counted(*args: Any) -> Any:
        counter.products += 1
        return original(*args)

    module.hessian_vector_product = counted
    try:
        yield
    finally:
        module.hessian_vector_product = original


def layer_diagonal_api() -> Callable[..., Any] | None:
    """``hesscli.engine.diagonal.exact_diagonal`` when this hesscli has it, else None."""
    try:
        from hesscli.engine.diagonal import exact_diagonal
    except ImportError:
        return None
    return exact_diagonal


def hesscli_products(op: CurvatureOperator) -> int:
    """Products an operator has spent, its route check included."""
    return op.counters.products + op.counters.check_products


def relative(value: float, reference: float) -> float:
    """|value − reference| / |reference|."""
    return abs(value - reference) / abs(reference)


def generator() -> torch.Generator:
    """A seeded CPU generator for hesscli (same start vector and probes every run)."""
    return torch.Generator().manual_seed(0)


class Spectral(Bench):
    """Runs every tool on one problem; engine.py's ``Bench`` gives the operators and orderings.

    Args:
        model: The model (float32), on its device.
        x: The batch's inputs.
        y: Its class labels.
        repeats: Least number of timed runs after a warm-up.
        cap: Seconds ARPACK may spend on the most negative eigenvalue.
        trace_budget: Most products hesscli's 1 % trace may spend (0: no cap).
        dense_limit: Largest parameter count whose dense float64 Hessian is the reference.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        repeats: int,
        *,
        cap: float,
        trace_budget: int,
        dense_limit: int,
    ) -> None:
        super().__init__(model, x, y, repeats)
        self.cap, self.trace_budget, self.dense_limit = cap, trace_budget, dense_limit
        self.layout = self.op("hessian", method="reverse", verify=False).layout
        self.bounds = [(b.start, b.stop) for b in self.layout.blocks]
        self.first = self.layout.blocks[0]
        self.cuda = self.device.type == "cuda"
        self.v0 = np.random.default_rng(0).standard_normal(self.size)  # ARPACK's start vector
        self.pyhessian = Counter()
        self.truth = self._exact()

    def _reference(self, kind: str) -> torch.Tensor:
        """Not needed here (engine.py's product references): skips two float64 passes."""
        return torch.empty(0)

    # -- references ----------------------------------------------------------------------------
    def _double(self) -> tuple[nn.Module, torch.Tensor]:
        """A float64 copy of the model and inputs."""
        return copy.deepcopy(self.model).double(), self.x.double()

    def backpack_diagonal(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """BackPACK's exact Hessian diagonal of an ``extend``-ed model, in hesscli's order."""
        loss = extend(nn.CrossEntropyLoss())(model(x), self.y)
        with backpack(DiagHessian()):
            loss.backward()
        return self._from_list([p.diag_h for p in model.parameters()])

    def _exact(self) -> Reference:
        start = time.perf_counter()
        model, x = self._double()
        diagonal = self.backpack_diagonal(extend(copy.deepcopy(model)), x)
        op = CurvatureOperator(
            model, memory_dataset(x, self.y), F.cross_entropy, micro_batch=len(self.y)
        )
        if self.size <= self.dense_limit:
            dense = op.dense()
            values = torch.linalg.eigvalsh(dense).tolist()
            gap = float((diagonal - dense.diagonal()).norm() / dense.diagonal().norm())
            exact = dense.diagonal()
            return Reference(
                top=values[::-1][:5],
                bottom=values[0],
                trace=float(exact.sum()),
                layer_traces=[float(exact[a:b].sum()) for a, b in self.bounds],
                diagonal=exact,
                how={
                    "eigenvalues": "dense float64 Hessian, torch.linalg.eigvalsh",
                    "trace, diagonal": f"dense float64 Hessian (BackPACK float64 within {gap:.0e})",
                },
                seconds=time.perf_counter() - start,
            )
        # Diagonal entries at random coordinates, from unit-vector products in float64.
        rows = torch.randperm(self.size, generator=generator())[:CHECK_ENTRIES].to(self.device)
        unit = torch.zeros(self.size, len(rows), dtype=torch.float64, device=self.device)
        columns = torch.arange(len(rows), device=self.device)
        unit[rows, columns] = 1
        entries = op.matmat(unit)[rows, columns]
        gap = float((diagonal[rows] - entries).norm() / entries.norm())
        (lanczos,) = extreme_eigenvalues(
            op.matmat, op.size, top_k=5, bottom_k=1, tol=1e-10, max_steps=400,
            generator=generator(), dtype=torch.float64, device=self.device,
        )  # fmt: skip
        top, bottom = [p.value for p in lanczos.top], lanczos.bottom[0].value
        arpack = self._arpack64(model, x)
        spread = max(relative(a, b) for a, b in zip(arpack, [*top, bottom], strict=True))
        agree = f"{spread:.0e}" if spread < 1e-6 else f"[bold red]{spread:.0e} only[/]"
        residual = max(p.residual for p in (*lanczos.top, *lanczos.bottom)) / lanczos.scale
        return Reference(
            top=top,
            bottom=bottom,
            trace=float(diagonal.sum()),
            layer_traces=[float(diagonal[a:b].sum()) for a, b in self.bounds],
            diagonal=diagonal,
            how={
                "eigenvalues": (
                    f"float64 Lanczos, tol 1e-10, {lanczos.steps} steps, residuals ≤ "
                    f"{residual:.0e}·‖H‖; float64 ARPACK (curvlinops, tol 1e-10) agrees to "
                    f"{agree}"
                ),
                "trace, diagonal": (
                    f"BackPACK DiagHessian in float64; {len(rows)} random entries match "
                    f"float64 unit-vector products to {gap:.0e}"
                ),
            },
            seconds=time.perf_counter() - start,
        )

    def _arpack64(self, model: nn.Module, x: torch.Tensor) -> list[float]:
        """Top-5 and the most negative eigenvalue by ARPACK on curvlinops' float64 operator."""
        data, params = [(x, self.y)], list(model.parameters())
        scipy_op = HessianLinearOperator(model, nn.CrossEntropyLoss(), params, data).to_scipy()
        top = eigsh(scipy_op, k=5, which="LA", tol=1e-10, v0=self.v0, return_eigenvectors=False)
        bottom = eigsh(scipy_op, k=1, which="SA", tol=1e-10, v0=self.v0, return_eigenvectors=False)
        return [*sorted(top.tolist(), reverse=True), float(bottom[0])]

    # -- measuring -------------------------------------------------------------------------------
    def measure(self, tool: str, task: str, call: Callable[[Any], Outcome], **how: Any) -> Row:
        """Time ``call(setup())``, keep the last run's outcome.

        ``how``: ``setup``, ``error`` (outcome value → relative error), ``long`` (a call of tens
        of seconds: timed once after the warm-up, whatever ``--repeats`` says).
        """
        outcomes: list[Outcome] = []
        repeats = 1 if how.get("long") else self.repeats
        try:
            seconds = median_seconds(
                lambda state: outcomes.append(call(state)),
                how.get("setup", object),
                repeats,
                self.device,
            )
        except Exception as error:  # a failing tool is a row, not the end of the benchmark
            return Row(tool, task, None, note=f"[red]failed: {type(error).__name__}: {error}[/]")
        out = outcomes[-1]
        error = how["error"](out.value) if "error" in how and out.value is not None else None
        return Row(tool, task, seconds, out.products, error, out.converged, out.note, out.stderr)

    def run(self) -> dict[str, Row]:  # type: ignore[override]
        """Every task, in table order, keyed by a short id."""
        rows: dict[str, Row] = {}
        with pyhessian_products(self.pyhessian):
            rows |= self._top()
            rows |= self._bottom()
            rows |= self._trace()
        rows |= self._diagonal()
        return rows

    def warm_op(self) -> CurvatureOperator:
        """An operator that has done its route check and one product (graph cached)."""
        op = self.op("hessian")
        op.matmat(self.v.to(op.dtype))
        sync(self.device)
        return op

    def curvlinops(self) -> CountingHessian:
        """A fresh curvlinops Hessian operator (its default determinism check included)."""
        return CountingHessian(self.model, nn.CrossEntropyLoss(), self.params, [(self.x, self.y)])

    def pyhessian_build(self) -> PyHessian:
        """A fresh PyHessian object in single-batch mode (forward + backward with graph)."""
        self.model.zero_grad(set_to_none=True)
        return PyHessian(self.model, F.cross_entropy, data=(self.x, self.y), cuda=self.cuda)

    # -- eigenvalues -----------------------------------------------------------------------------
    def _extremes(self, top_k: int, bottom_k: int, key: str, task: str) -> dict[str, Row]:
        """Lanczos by hesscli, cold (operator built and checked in the timing) and warm."""

        def solve(op: CurvatureOperator) -> Outcome:
            before, checks = hesscli_products(op), op.counters.check_products
            (found,) = extreme_eigenvalues(
                op.matmat, op.size, top_k=top_k, bottom_k=bottom_k, tol=TOL,
                generator=generator(), dtype=torch.float32, device=self.device,
            )  # fmt: skip
            products = hesscli_products(op) - before
            return _lanczos_outcome(found, products, op.counters.check_products - checks, op)

        def error(v: list[float] | float) -> float:
            return self._eigen_error(v, key)

        cold = lambda _: solve(self.op("hessian"))  # noqa: E731
        tool = "hesscli Lanczos, tol 1e-4"
        return {
            f"{key}.hesscli": self.measure(f"{tool} (cold)", task, cold, error=error),
            f"{key}.warm": self.measure(
                f"{tool} (warm operator)", task, solve, setup=self.warm_op, error=error
            ),
        }

    def _eigen_error(self, values: list[float] | float, key: str) -> float:
        """Largest relative error of the top-5 (``key`` "top") or of the most negative."""
        if key == "bottom":
            assert isinstance(values, float)
            return relative(values, self.truth.bottom)
        assert isinstance(values, list)
        if len(values) < len(self.truth.top):
            return float("inf")
        return max(relative(a, b) for a, b in zip(values, self.truth.top, strict=False))

    def _top(self) -> dict[str, Row]:
        task = "top-5 eigenvalues"
        rows = self._extremes(5, 0, "top", task)
        error = lambda v: self._eigen_error(v, "top")  # noqa: E731

        def pyhessian(_: object) -> Outcome:
            torch.manual_seed(0)  # its random start vectors
            self.pyhessian.products = 0
            values, _vectors = self.pyhessian_build().eigenvalues(top_n=5)
            self.model.zero_grad(set_to_none=True)  # drop the graph it keeps in .grad
            note = "power iteration + deflation, maxIter 100, tol 1e-3 (its defaults)"
            return Outcome(sorted(values, reverse=True), self.pyhessian.products, None, note)

        rows["top.pyhessian"] = self.measure("PyHessian eigenvalues(top_n=5)", task, pyhessian,
                                             error=error)  # fmt: skip
        rows["top.eigsh"] = self.measure(
            "curvlinops + scipy eigsh", task, lambda _: self._eigsh(5, "LA", None), error=error
        )
        return rows

    def _eigsh(self, k: int, which: str, maxiter: int | None) -> Outcome:
        """ARPACK on a fresh curvlinops operator (its construction and check included)."""
        lin = self.curvlinops()
        checks = lin.products
        note = f"k={k}, which={which}, tol 1e-4 (ARPACK: residual ≤ tol·|λ|)"
        if maxiter is not None:
            note += f", maxiter {maxiter}"
        try:
            found = eigsh(lin.to_scipy(), k=k, which=which, tol=TOL, v0=self.v0, maxiter=maxiter,
                          return_eigenvectors=False)  # fmt: skip
        except ArpackNoConvergence as stop:
            value = float(stop.eigenvalues[0]) if len(stop.eigenvalues) else None
            note = f"[red]not converged[/] ({note}; the cap)"
            return Outcome(value, lin.products, False, note)
        values = sorted(found.tolist(), reverse=which == "LA")
        note += f"; {checks} products in its construction check"
        return Outcome(values if k > 1 else values[0], lin.products, True, note)

    def _bottom(self) -> dict[str, Row]:
        task = "most negative eigenvalue"
        rows = self._extremes(0, 1, "bottom", task)
        lin, ncv = self.curvlinops(), 20  # scipy's ncv for k=1
        v = torch.from_numpy(self.v0).to(self.device, torch.float32)
        seconds = median_seconds(lambda _: lin @ v, object, 3, self.device)
        maxiter = max(2, round(self.cap / seconds / (ncv - 1)))
        rows["bottom.eigsh"] = self.measure(
            "curvlinops + scipy eigsh",
            task,
            lambda _: self._eigsh(1, "SA", maxiter),
            error=lambda v: self._eigen_error(v, "bottom"),
        )
        rows["bottom.pyhessian"] = Row(
            "PyHessian", task, None, note="no method for the smallest eigenvalue"
        )
        return rows

    # -- trace -----------------------------------------------------------------------------------
    def _trace(self) -> dict[str, Row]:
        task = "trace"
        error = lambda v: relative(v, self.truth.trace)  # noqa: E731

        def hesscli(op: CurvatureOperator, budget: int | None, target: float | None) -> Outcome:
            before = hesscli_products(op)
            found = estimate_trace(
                op.matmat, op.size, products=budget, target=target,
                blocks=self.bounds, generator=generator(), dtype=torch.float32,
                device=self.device,
            )  # fmt: skip
            layers = [
                relative(b.value, r)
                for b, r in zip(found.blocks, self.truth.layer_traces, strict=True)
            ]
            note = (
                f"{found.method}: {found.sketch} sketch + {found.probes} probes, stopped on "
                f"{found.stopped}; ±{found.total.stderr / abs(found.total.value):.2%} stderr; "
                f"{len(layers)} layer traces from the same products (worst error "
                f"{max(layers):.1e})"
            )
            stderr = found.total.stderr / abs(found.total.value)
            return Outcome(found.total.value, hesscli_products(op) - before, True, note, stderr)

        budget = self.trace_budget or None
        cap = f"≤ {budget:,} products" if budget else "no cap"
        rows = {}
        for key, tool, call, setup, long in (
            ("trace.hesscli", f"hesscli Hutch++, target 1 %, {cap} (cold)",
             lambda _: hesscli(self.op("hessian"), budget, TRACE_TARGET), object, True),
            ("trace.h48", f"hesscli Hutch++, {HUTCHPP} products (warm operator)",
             lambda op: hesscli(op, HUTCHPP, None), self.warm_op, False),
        ):  # fmt: skip
            rows[key] = self.measure(tool, task, call, setup=setup, error=error, long=long)

        def pyhessian(_: object) -> Outcome:
            torch.manual_seed(0)  # its Rademacher probes
            self.pyhessian.products = 0
            samples = self.pyhessian_build().trace()
            self.model.zero_grad(set_to_none=True)
            note = "Hutchinson, maxIter 100, tol 1e-3 on the running mean (its defaults)"
            return Outcome(float(np.mean(samples)), self.pyhessian.products, None, note)

        def hutchpp(_: object) -> Outcome:
            torch.manual_seed(0)  # its probes
            lin = self.curvlinops()
            value = float(hutchpp_trace(lin, HUTCHPP))
            note = f"hutchpp_trace({HUTCHPP}), no error estimate; incl. construction check"
            return Outcome(value, lin.products, None, note)

        rows["trace.pyhessian"] = self.measure("PyHessian trace()", task, pyhessian, error=error)
        rows["trace.hutchpp"] = self.measure(
            f"curvlinops Hutch++ {HUTCHPP}", task, hutchpp, error=error
        )
        return rows

    # -- diagonal --------------------------------------------------------------------------------
    def _diagonal(self) -> dict[str, Row]:
        first, task_all = self.first, "diagonal, whole model"
        task_first = f"diagonal, layer {first.name} ({first.size:,} params)"
        whole = lambda v: self._diag_error(v, 0, self.size)  # noqa: E731
        layer = lambda v: self._diag_error(v, first.start, first.stop)  # noqa: E731
        rows: dict[str, Row] = {}

        extended = extend(copy.deepcopy(self.model))
        note = "exact; one backward pass with a factor of the loss Hessian, no products"
        backpacked = lambda _: Outcome(  # noqa: E731
            self.backpack_diagonal(extended, self.x), None, True, f"{note}; extend() untimed"
        )
        rows["diag.backpack"] = self.measure(
            "BackPACK DiagHessian", task_all, backpacked, error=whole
        )

        def xdiagonal(_: object) -> Outcome:
            torch.manual_seed(0)  # its probes
            lin = self.curvlinops()
            value = xdiag(lin, XDIAG)[self.to_layout].double()
            return Outcome(value, lin.products, None, f"xdiag({XDIAG}); incl. construction check")

        rows["diag.xdiag"] = self.measure(
            f"curvlinops XDiag {XDIAG}", task_all, xdiagonal, error=whole, long=True
        )
        api = layer_diagonal_api()
        if api is not None:
            tool, cold = "hesscli exact_diagonal", lambda _, b: self._layer_diagonals(api, b)
            for key, suffix, task, blocks, error, setup, call in (
                ("diag.hesscli", "(cold)", task_all, None, whole, object, cold),
                ("diag.hesscli0", "(cold)", task_first, [first.name], layer, object, cold),
                ("diag.warm0", "(warm operator)", task_first, [first.name], layer, self.warm_op,
                 lambda op, b: self._layer_diagonals(api, b, op)),
            ):  # fmt: skip
                run = lambda state, c=call, b=blocks: c(state, b)  # noqa: E731
                rows[key] = self.measure(f"{tool} {suffix}", task, run, setup=setup, error=error)
        elif self.size <= self.dense_limit:
            note = "unit columns, 64 per pass (hesscli.engine.diagonal missing)"
            for key, task, (start, stop), error in (
                ("diag.hesscli", task_all, (0, self.size), whole),
                ("diag.hesscli0", task_first, (first.start, first.stop), layer),
            ):
                call = lambda _, a=start, b=stop, n=note: self._columns(a, b, n)  # noqa: E731
                rows[key] = self.measure("hesscli unit columns", task, call, error=error)
        else:
            missing = "not available: hesscli.engine.diagonal is missing"
            rows["diag.hesscli"] = Row("hesscli exact_diagonal", task_all, None, note=missing)
            rows["diag.hesscli0"] = Row("hesscli exact_diagonal", task_first, None, note=missing)
        return rows

    def _layer_diagonals(
        self, api: Callable[..., Any], blocks: list[str] | None, op: CurvatureOperator | None = None
    ) -> Outcome:
        """The exact per-layer diagonals by hesscli (on a fresh operator unless ``op`` is given)."""
        op = op or self.op("hessian")
        before, checks = hesscli_products(op), op.counters.check_products
        found = api(op, blocks=blocks)
        names = [b.name for b in self.layout.blocks if blocks is None or b.name in blocks]
        value = torch.cat([found.values[n].reshape(-1) for n in names]).double()
        methods = ", ".join(sorted(set(found.methods.values())))
        note = (
            f"{methods}; + {found.output_products:,} layer-output products/vjps; "
            f"{op.counters.check_products - checks} of the products are checks"
        )
        return Outcome(value, hesscli_products(op) - before, True, note)

    def _columns(self, start: int, stop: int, note: str) -> Outcome:
        """Fallback: diag of rows ``start:stop`` from unit columns (``stop − start`` products)."""
        op = self.op("hessian")

        def block(columns: torch.Tensor) -> torch.Tensor:
            full = columns.new_zeros(op.size, columns.shape[1])
            full[start:stop] = columns
            return op.matmat(full)[start:stop]

        found = diagonal_from_columns(
            block, stop - start, columns=64, dtype=torch.float32, device=self.device
        )
        return Outcome(found.values, hesscli_products(op), True, note)

    def _diag_error(self, value: torch.Tensor, start: int, stop: int) -> float:
        """‖d − d_ref‖ / ‖d_ref‖ on rows ``start:stop``."""
        reference = self.truth.diagonal[start:stop]
        return float((value.to(reference) - reference).norm() / reference.norm())


def _lanczos_outcome(found: Extremes, products: int, checks: int, op: CurvatureOperator) -> Outcome:
    """Values (top-5 list, or the most negative), products and a note of one Lanczos run."""
    pairs = (*found.top, *found.bottom)
    values = [p.value for p in found.top] or pairs[0].value
    converged = all(p.converged for p in pairs)
    worst = max(p.residual for p in pairs) / found.scale
    route = op.route.route[:3] if op.route is not None else "?"
    note = (
        f"{found.steps} steps, residuals ≤ {worst:.0e}·‖H‖"
        f"{'' if converged else ' [red](not converged)[/]'}; route {route}, "
        f"{checks} of the products are checks"
    )
    return Outcome(values, products, converged, note)


@dataclass
class Target:
    """One of the issue's targets: hesscli's time against a peer's, and an accuracy condition."""

    name: str
    ours: str
    peer: str | list[str]  # several: the fastest converged one
    factor: float
    accurate: Callable[[Row], bool]
    condition: str


TARGETS = [
    Target("top-5 to 1e-4 rel. in ≤ ½ PyHessian's time", "top.hesscli", "top.pyhessian", 0.5,
           lambda r: r.error is not None and r.error <= 1e-4, "error ≤ 1e-4"),
    Target("most negative to 1e-3 rel. in ≤ ½ the fastest converging peer", "bottom.hesscli",
           ["bottom.eigsh"], 0.5, lambda r: r.error is not None and r.error <= 1e-3,
           "error ≤ 1e-3"),
    Target("trace with ≤ 1 % rel. stderr in ≤ Hutch++-48's time", "trace.hesscli",
           "trace.hutchpp", 1.0, lambda r: r.stderr is not None and r.stderr <= 0.01,
           "stderr ≤ 1 %"),
    Target("exact diagonal of layer 0 in ≤ 3× BackPACK (whole model)", "diag.hesscli0",
           "diag.backpack", 3.0, lambda r: r.error is not None and r.error <= 1e-4,
           "error ≤ 1e-4"),
]  # fmt: skip


def judge(target: Target, rows: dict[str, Row]) -> dict[str, Any]:
    """Ratio hesscli / peer time and PASS / FAIL (or n/a) for one target."""
    ours = rows[target.ours]
    keys = [target.peer] if isinstance(target.peer, str) else target.peer
    peers = [rows[k] for k in keys if rows[k].seconds is not None]
    converged = [r for r in peers if r.converged is not False]
    bound = False  # the peer's time is only a lower bound (it stopped at its cap)
    if converged:
        peer = min(converged, key=lambda r: r.seconds or 0.0)
    elif peers:
        peer, bound = max(peers, key=lambda r: r.seconds or 0.0), True
    else:
        peer = None
    out: dict[str, Any] = {"target": target.name, "ours": target.ours, "ratio": None}
    if ours.seconds is None or peer is None or peer.seconds is None:
        out["verdict"] = "n/a"
        return out
    ratio = ours.seconds / peer.seconds
    accurate = target.accurate(ours)
    fast = ratio <= target.factor
    out |= {"peer": peer.tool, "seconds": ours.seconds, "peer_seconds": peer.seconds}
    out |= {"ratio": ratio, "accurate": accurate, "peer_capped": bound}
    if bound and not fast and accurate:
        out["verdict"] = "n/a"  # the peer never converged: its real time is unknown
    else:
        out["verdict"] = "PASS" if accurate and fast else "FAIL"
    return out


#: (label, numerator row, denominator row) of the ratio table.
RATIOS = [
    ("top-5: hesscli cold / PyHessian", "top.hesscli", "top.pyhessian"),
    ("top-5: hesscli warm / PyHessian", "top.warm", "top.pyhessian"),
    ("top-5: hesscli cold / curvlinops + eigsh", "top.hesscli", "top.eigsh"),
    ("most negative: hesscli cold / curvlinops + eigsh", "bottom.hesscli", "bottom.eigsh"),
    ("trace: hesscli cold (1 % target) / curvlinops Hutch++-48", "trace.hesscli",
     "trace.hutchpp"),
    ("trace: hesscli Hutch++-48 warm / curvlinops Hutch++-48", "trace.h48", "trace.hutchpp"),
    ("trace: hesscli cold / PyHessian trace()", "trace.hesscli", "trace.pyhessian"),
    # Every layer's trace is read off the products of the global run: 1 by construction.
    ("trace: hesscli per-layer / global (same run, same products)", "trace.hesscli",
     "trace.hesscli"),
    ("diagonal: hesscli layer 0 / BackPACK whole model", "diag.hesscli0", "diag.backpack"),
    ("diagonal: hesscli layer 0, warm / BackPACK whole model", "diag.warm0", "diag.backpack"),
    ("diagonal: hesscli whole model / BackPACK whole model", "diag.hesscli", "diag.backpack"),
]  # fmt: skip


def ratios(rows: dict[str, Row]) -> dict[str, float | None]:
    """Time of hesscli / time of a peer (< 1: hesscli is faster); None where one did not run."""
    out: dict[str, float | None] = {}
    for label, ours, peer in RATIOS:
        a, b = (rows[k].seconds if k in rows else None for k in (ours, peer))
        out[label] = None if a is None or b is None else a / b
    return out


def render(console: Console, title: str, rows: dict[str, Row], truth: Reference) -> None:
    """The measurements, the targets and the ratios of one problem."""
    table = Table(title=title, title_justify="left")
    for name in ("task", "tool", "seconds", "products", "rel. err", "note"):
        table.add_column(name, justify="right" if name in ("seconds", "products") else "left")
    last = None
    for r in rows.values():
        if last is not None and r.task != last:
            table.add_section()
        table.add_row(
            r.task if r.task != last else "",
            r.tool,
            "—" if r.seconds is None else f"{r.seconds:.3f}",
            "—" if r.products is None else f"{r.products:,}",
            "—" if r.error is None else f"{r.error:.1e}",
            r.note,
        )
        last = r.task
    console.print(table)
    for task, how in truth.how.items():
        console.print(f"reference for {task}: {how}")
    verdicts = Table(title="targets (hesscli cold: operator built and checked in the timing)",
                     title_justify="left")  # fmt: skip
    for name in ("target", "peer", "hesscli s", "peer s", "hesscli / peer", "accuracy", "verdict"):
        verdicts.add_column(name, justify="right" if name.endswith(("s", "peer")) else "left")
    for target in TARGETS:
        v = judge(target, rows)
        ratio = "—" if v["ratio"] is None else f"{v['ratio']:.2f}"
        if v.get("peer_capped"):
            ratio += " (peer capped, not converged)"
        colour = {"PASS": "green", "FAIL": "red"}.get(v["verdict"], "yellow")
        met = {True: "yes", False: "no", None: "—"}[v.get("accurate")]
        accuracy = f"{target.condition}: {met}"
        seconds = [v.get(k) for k in ("seconds", "peer_seconds")]
        verdicts.add_row(
            target.name, v.get("peer", "—"), *("—" if t is None else f"{t:.3f}" for t in seconds),
            ratio, accuracy, f"[{colour}]{v['verdict']}[/]",
        )  # fmt: skip
    console.print(verdicts)
    ratio_table(console, "hesscli time / peer time (< 1: hesscli faster)", ratios(rows))


def main() -> None:
    parser = options(__doc__.splitlines()[0], MODELS, repeats=3)
    parser.add_argument("--cap", type=float, default=10.0, help="seconds for eigsh's bottom run")
    parser.add_argument(
        "--trace-budget", type=int, default=1000, help="cap on hesscli's 1 %% trace (0: none)"
    )
    args = parser.parse_args()
    packages = ("torch", "hesscli", "PyHessian", "curvlinops-for-pytorch", "backpack-for-pytorch",
                "scipy")  # fmt: skip
    device, console, versions = begin(args.device, packages, width=220)
    console.print(
        f"seconds: median of ≥{args.repeats} runs after a warm-up; products: Hessian-vector "
        "products (a K-column call counts K); rel. err: |x − ref| / |ref| (top-5: worst of the "
        "5; diagonals: ‖d − ref‖ / ‖ref‖)"
    )
    report: dict[str, Any] = {"device": str(device), "versions": versions}
    for name in args.models.split(","):
        start = cpu_ticks()
        model, x, y = MODELS[name]()
        bench = Spectral(
            model.to(device), x.to(device), y.to(device), args.repeats, cap=args.cap,
            trace_budget=args.trace_budget, dense_limit=20_000,
        )  # fmt: skip
        rows = bench.run()
        busy = others_share(start)
        title = (
            f"{name}: {bench.size:,} parameters, {len(y)} samples "
            f"(references took {bench.truth.seconds:.1f} s, not counted)"
        )
        render(console, title, rows, bench.truth)
        print_busy(console, busy)
        truth = asdict(bench.truth) | {"diagonal": None}
        report[name] = {
            "parameters": bench.size, "samples": len(y), "repeats": args.repeats, "others": busy,
            "reference": truth, "rows": {k: asdict(r) for k, r in rows.items()},
            "targets": [judge(t, rows) for t in TARGETS], "ratios": ratios(rows),
        }  # fmt: skip
    write_json(console, args.json, report)


if __name__ == "__main__":
    main()
