"""The curvature operator: C·V over the whole data set, for C = H (Hessian) or the GGN.

This is hesscli's public engine API; the algorithms and the CLI call exactly this. Example, on
the seed 3→4→5 network (the loss is the mean over all samples, whatever the micro-batching)::

    >>> import torch
    >>> from torch import nn
    >>> from hesscli.engine.operator import CurvatureOperator
    >>> from hesscli.batches import Batch, Dataset
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5)).double().eval()
    >>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 5, dtype=torch.float64)
    >>> data = Dataset((Batch(x, y),), source="memory", format="memory", available=10)
    >>> mse = lambda out, t: (out - t).square().mean()
    >>> op = CurvatureOperator(model, data, mse, micro_batch=3)   # 4 micro-batches: 3+3+3+1
    >>> H = op.dense()
    >>> H.shape, bool(torch.allclose(H, H.T))
    (torch.Size([41, 41]), True)
    >>> op.route.route in ("forward-over-reverse", "reverse-over-reverse")
    True
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from hesscli.batches import Dataset
from hesscli.engine.determinism import check_modules, check_repeatable
from hesscli.engine.device import synchronize
from hesscli.engine.distributed import SINGLE, Group
from hesscli.engine.functional import (
    DEFAULT_MICRO_BATCH,
    Params,
    math_attention,
    micro_batches,
    to_device,
)
from hesscli.engine.heap import HeapTrimmer, keep_freed_memory
from hesscli.engine.layout import Block, Layout
from hesscli.engine.memory import (
    MemoryPlan,
    check_free,
    format_size,
    is_out_of_memory,
    plan_memory,
    release_cached,
    total_bytes,
)
from hesscli.engine.params import list_layers
from hesscli.engine.precision import float32_precision
from hesscli.engine.products import Apply, LossFn, MicroBatchLoss
from hesscli.engine.routes import (
    FORWARD,
    METHODS,
    MISSING_RULE,
    REVERSE,
    RouteReport,
    WatchAttention,
    build,
    check_slice,
    judged_reverse,
    select_route,
    self_checked_reverse,
)
from hesscli.engine.symmetry import FirstColumns, asymmetry_error, too_large
from hesscli.engine.weighting import Weighting
from hesscli.errors import ConfigError, DifferentiationError, MemoryLimitError, NumericalError

log = logging.getLogger("hesscli")

KINDS = ("hessian", "ggn")
REDUCTIONS = ("mean", "sum")
#: Columns pushed through ``vmap`` at once by the forward-over-reverse route.
DEFAULT_CHUNK = 16


@dataclass
class Counters:
    """Work done so far.

    Attributes:
        products: Curvature-vector products over the whole data set (one per column; a block
            product over L layers counts L per column).
        data_passes: Passes over the data set (a pass may carry many columns).
        check_products: Extra single-micro-batch products spent checking the route.
        seconds: Wall time inside the operator.
    """

    products: int = 0
    data_passes: int = 0
    check_products: int = 0
    seconds: float = 0.0


class CurvatureOperator:
    """C·V for the Hessian or the GGN of the mean loss over all N samples.

    The data set is split into micro-batches of ``micro_batch`` samples (the last may be
    smaller); micro-batch j contributes its mean-loss product weighted by bⱼ/N, so the result is
    that of a single pass over all samples whatever the split. Coordinates are the parameters of
    ``blocks`` (default: every layer's trainable parameters), in block order; the other
    trainable parameters are held fixed, and buffers and frozen parameters stay the model's own.

    Args:
        model: The model, already on its device and dtype and in eval (or train) mode.
        dataset: All evaluation samples.
        loss_fn: ``loss_fn(outputs, targets)`` → mean loss of a batch.
        kind: ``"hessian"`` or ``"ggn"`` (Jᵀ H_out J, with J the Jacobian of the outputs).
        reduction: What ``loss_fn`` returns: ``"mean"`` (the default, hesscli's contract;
            micro-batches are weighted bⱼ/N) or ``"sum"`` over the batch (the curvature is then
            that of the summed loss, and micro-batches add up with weight 1).
        blocks: ``[(name, [parameter names]), ...]``; default: one block per layer.
        method: ``"auto"`` (double backward, falling back to forward mode, then finite
            differences, where a route cannot run; see :mod:`.routes`), ``"forward"``,
            ``"reverse"`` or ``"fd"`` (forced, still checked).
        micro_batch: Samples per micro-batch (default 512).
        chunk_size: Columns per ``vmap`` call of the forward route (bounds its memory).
        cache_bytes: Memory the reverse route may spend keeping each micro-batch's gradient
            graph between calls, which makes later products skip the forward pass (default: a
            quarter of the device's free memory; 0 disables).
        verify: Check the route on a slice of the first micro-batch (turn off only to time a
            bare route).
        group: The distributed process group; ``dataset`` is then this rank's shard, and every
            product is summed over the ranks (default: one process).
        weighting: The unit the loss averages over and its total over all ranks (default: the
            samples of ``dataset``); see :mod:`hesscli.engine.weighting`.
        allow_tf32: Let CUDA matmuls and cuDNN use TF32 in the products (default: true
            float32; see :mod:`hesscli.engine.precision`).
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        loss_fn: LossFn,
        *,
        kind: str = "hessian",
        reduction: str = "mean",
        blocks: list[tuple[str, list[str]]] | None = None,
        method: str = "auto",
        micro_batch: int | None = None,
        chunk_size: int | None = DEFAULT_CHUNK,
        cache_bytes: int | None = None,
        verify: bool = True,
        group: Group = SINGLE,
        weighting: Weighting | None = None,
        allow_tf32: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"unknown curvature {kind!r}", "use hessian or ggn")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"unknown reduction {reduction!r}", "use mean or sum")
        if method not in METHODS:
            raise ConfigError(f"unknown --hvp-method {method!r}", "use auto, forward or reverse")
        if micro_batch is not None and micro_batch < 1:
            raise ConfigError(
                f"--micro-batch must be at least 1, got {micro_batch}", "pass a positive size"
            )
        if not verify and method == "auto":
            raise ConfigError(
                "an unverified operator needs a forced method", "pass method='forward' or 'reverse'"
            )
        self.model = model
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.kind = kind
        self.reduction = reduction
        self.method = method
        self.micro_batch = micro_batch or DEFAULT_MICRO_BATCH
        self.chunk_size = chunk_size
        self.verify = verify
        self.group = group
        self.allow_tf32 = allow_tf32
        self.weighting = weighting or Weighting("samples", dataset.num_samples, dataset.num_samples)
        self.memory: MemoryPlan | None = None
        self._held = 0  # bytes the algorithm has reserved (see reserve)
        trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        if blocks is None:
            blocks = [
                (layer.name, [p for p in layer.parameters if p in trainable])
                for layer in list_layers(model)
                if layer.trainable
            ]
        self.layout = Layout.build({n: tuple(p.shape) for n, p in trainable.items()}, blocks)
        self._variables = {n: trainable[n] for n in self.layout.names}
        self._fixed = {n: p for n, p in trainable.items() if n not in self._variables}
        sample = next(iter(self._variables.values()))
        self.device, self.dtype = sample.device, sample.dtype
        self.cache_bytes = _default_cache_bytes(self.device) if cache_bytes is None else cache_bytes
        self.counters = Counters()
        self.route: RouteReport | None = None
        self.graph_bytes = 0
        self._cache: dict[int, Apply] = {}
        self._checked = False
        self._symmetry: FirstColumns | None = None  # the default route's pending check
        self._proven = False  # whether a product of the chosen route has run
        self._heap = HeapTrimmer()
        self._gradient: Params | None = None  # see free_gradient
        if self.device.type == "cpu":
            keep_freed_memory()  # every pass reuses the last one's pages (see .heap)
        #: Called as ``progress(done, total)`` after each micro-batch of a pass.
        self.progress: Callable[[int, int], None] | None = None

    # -- sizes -------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """P, the number of coordinates (rows of a product)."""
        return self.layout.size

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``, as for a matrix."""
        return (self.size, self.size)

    @property
    def blocks(self) -> tuple[Block, ...]:
        """The layers, each a contiguous row range."""
        return self.layout.blocks

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per data pass."""
        return sum(-(-b.size // self.micro_batch) for b in self.dataset.batches)

    # -- products ----------------------------------------------------------------------------
    def matmat(self, matrix: torch.Tensor) -> torch.Tensor:
        """C·V for a ``(P, K)`` block of columns (or C·v for a ``(P,)`` vector), one data pass."""
        columns = self._columns(matrix)
        (result,) = self._pass([(None, columns)])
        self.counters.products += columns.shape[1]
        return result if matrix.ndim == 2 else result[:, 0]

    matvec = matmat

    def __matmul__(self, matrix: torch.Tensor) -> torch.Tensor:
        return self.matmat(matrix)

    def block_matmat(self, matrix: torch.Tensor) -> torch.Tensor:
        """Block-diagonal product: rows of block l are C_ll·V_l, for every layer l at once.

        One data pass carries every layer's columns; each is a product on that layer's
        parameters alone (see :mod:`.products`), so no parameter-length column is built per
        layer and memory stays that of V.
        """
        columns = self._columns(matrix)
        _, result = self.fused_matmat(columns[:, :0], columns)
        return result if matrix.ndim == 2 else result[:, 0]

    def block_product(self, block: Block, matrix: torch.Tensor) -> torch.Tensor:
        """C_ll·V for one block l: ``(n_l, K)`` columns on its rows → ``(n_l, K)``, one pass.

        Nothing parameter-length is built: exact diagonals by unit columns cost memory of the
        layer's size, not the model's.
        """
        if matrix.ndim != 2 or matrix.shape[0] != block.size:
            raise ValueError(f"expected ({block.size}, K), got {tuple(matrix.shape)}")
        columns = matrix.to(device=self.device, dtype=self.dtype)
        (result,) = self._pass([(block, columns)])
        self.counters.products += columns.shape[1]
        return result

    def fused_matmat(
        self, full: torch.Tensor, blockwise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C·A, block_matmat(B))`` in one data pass: both sets of columns ride together.

        Lets several algorithms (whole-model and per-layer Lanczos runs, density probes)
        share the forward and backward work of every micro-batch.
        """
        a, b = self._columns(full), self._columns(blockwise)
        requests: list[tuple[Block | None, torch.Tensor]] = [(None, a)]
        if b.shape[1]:
            requests += [(block, b[block.start : block.stop]) for block in self.layout.blocks]
        products = self._pass(requests)
        self.counters.products += a.shape[1] + len(self.layout.blocks) * b.shape[1]
        result = torch.cat(products[1:]) if b.shape[1] else b.new_zeros(b.shape)
        return products[0], result

    def free_gradient(self) -> torch.Tensor | None:
        """∇L as a ``(P,)`` vector when it costs no extra work, else None (once per operator).

        It is free when the whole data set is one micro-batch on one process and the Hessian
        is taken by double backward: the graph the first product needs computes the gradient
        on the way, so this builds it now and keeps it for the products. Lanczos starts from
        it, partly (:func:`~hesscli.algorithms.eigen.extreme_eigenvalues`).
        """
        if self.kind != "hessian" or self.num_micro_batches != 1 or not self._self_checking():
            return None
        if self.route is None:
            _, part, _ = next(iter(micro_batches(self.dataset, self.micro_batch, self.weighting)))
            try:
                with float32_precision(self.allow_tf32), math_attention():
                    self._apply(0, part)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                self.release()  # the first pass meets it again, and shrinks (see _pass)
                return None
        gradient, self._gradient = self._gradient, None
        if gradient is None:
            return None
        return self.layout.flatten({n: g[None] for n, g in gradient.items()})[:, 0]

    def start_gradient(self) -> torch.Tensor | None:
        """∇L as a ``(P,)`` vector, for starting Lanczos: free when it can be, else one pass.

        Free (:meth:`free_gradient`) with one micro-batch on one process; otherwise one forward
        and backward pass over this rank's micro-batches, weighted as the products are and
        summed over the ranks. Every split of the data and every number of ranks thus gives
        the same vector up to round-off, so the eigenvalues that start from it do not depend
        on ``--micro-batch`` or torchrun. None if the pass runs out of memory.
        """
        free = self.free_gradient()
        if free is not None:
            return free
        total = torch.zeros(self.size, device=self.device, dtype=self.dtype)
        start = time.perf_counter()
        parts = micro_batches(self.dataset, self.micro_batch, self.weighting)
        try:
            with float32_precision(self.allow_tf32), math_attention():
                for _, part, weight in parts:
                    mb = self._micro_batch_loss(part)
                    names = list(mb.variables)
                    leaves = [mb.variables[n].detach().requires_grad_(True) for n in names]
                    loss = mb.loss(dict(zip(names, leaves, strict=True)))
                    pieces = torch.autograd.grad(loss, leaves, allow_unused=True)
                    alpha = weight if self.reduction == "mean" else 1.0
                    found = dict(zip(names, pieces, strict=True))
                    for name, rows in self._rows(None, total[:, None]):
                        if found[name] is not None:
                            rows[:, 0].add_(found[name].reshape(-1), alpha=alpha)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            return None
        self.group.sum_(total)
        self.counters.data_passes += 1
        self.counters.seconds += time.perf_counter() - start
        return total

    def dense(self, *, columns_per_pass: int = 256) -> torch.Tensor:
        """The whole ``(P, P)`` matrix, column blocks at a time (for small models and tests)."""
        eye = torch.eye(self.size, device=self.device, dtype=self.dtype)
        parts = [
            self.matmat(eye[:, start : start + columns_per_pass])
            for start in range(0, self.size, columns_per_pass)
        ]
        return torch.cat(parts, dim=1)

    def release(self) -> None:
        """Drop the cached gradient graphs (the next product rebuilds what it needs)."""
        self._cache.clear()
        self.graph_bytes = 0

    # -- internals ---------------------------------------------------------------------------
    def _columns(self, matrix: torch.Tensor) -> torch.Tensor:
        if matrix.ndim not in (1, 2) or matrix.shape[0] != self.size:
            raise ValueError(
                f"expected ({self.size},) or ({self.size}, K), got {tuple(matrix.shape)}"
            )
        columns = matrix if matrix.ndim == 2 else matrix[:, None]
        return columns.to(device=self.device, dtype=self.dtype)

    def micro_batch_losses(self) -> Iterator[tuple[int, MicroBatchLoss, float]]:
        """``(first sample, loss, weight)`` per micro-batch, on the operator's device and dtype.

        The weight is bⱼ/N for mean losses (1 for sums): weighted results add up to the whole.
        For engine code that takes other derivatives of the same losses (layer diagonals).
        """
        for first, part, weight in micro_batches(self.dataset, self.micro_batch, self.weighting):
            yield first, self._micro_batch_loss(part), weight if self.reduction == "mean" else 1.0

    def _micro_batch_loss(self, part: object) -> MicroBatchLoss:
        batch = to_device(part, device=self.device, dtype=self.dtype)  # type: ignore[arg-type]
        return MicroBatchLoss(self.model, self.loss_fn, batch, self._variables, self._fixed)

    def _pass(self, requests: list[tuple[Block | None, torch.Tensor]]) -> list[torch.Tensor]:
        """One pass over this rank's micro-batches, summed over the ranks.

        Each request is ``(block, columns)``: C·V over all coordinates (``block`` None), or
        C_ll·V_l on the rows of one block. Running out of memory is not fatal: the pass
        restarts with half the vmap chunk, then half the micro-batch (neither changes the
        result), until nothing smaller is possible.
        """
        start = time.perf_counter()
        tangents = [(block, self.layout.unflatten(columns, block)) for block, columns in requests]
        with float32_precision(self.allow_tf32):  # true float32 unless opted in; restored
            while True:
                try:
                    totals = self._local_pass(tangents, [c.shape[1] for _, c in requests])
                    break
                except (RuntimeError, MemoryError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    self._shrink(exc)
        for total in totals:
            self.group.sum_(total)
        if self._symmetry is not None and not self._symmetry.done:
            self._judge_symmetry(requests, totals)
        if self.device.type == "cpu":
            self._heap.after_pass()
        self.counters.data_passes += 1
        synchronize(self.device)  # the pass's kernels are done before the timer is read
        self.counters.seconds += time.perf_counter() - start
        return totals

    def _local_pass(
        self, tangents: list[tuple[Block | None, Params]], counts: list[int]
    ) -> list[torch.Tensor]:
        # Written whole by the first micro-batch (no zero fill), added to by the others.
        totals = [
            torch.empty(
                self.size if block is None else block.size,
                count,
                device=self.device,
                dtype=self.dtype,
            )
            for (block, _), count in zip(tangents, counts, strict=True)
        ]
        if not any(counts):
            return totals
        batches, index = self.num_micro_batches, -1
        with math_attention():
            for index, (first, part, weight) in enumerate(
                micro_batches(self.dataset, self.micro_batch, self.weighting)
            ):
                apply = self._apply(index, part)
                for (block, vectors), total, count in zip(tangents, totals, counts, strict=True):
                    if not count:
                        continue
                    # Mean: weight uⱼ/U, so the sum is the mean over all units; sum: weight 1.
                    # Slot by slot: no flat copy of the columns.
                    alpha = weight if self.reduction == "mean" else 1.0
                    product = apply(vectors)
                    for slot, rows in self._rows(block, total):
                        piece = product.pop(slot).reshape(count, -1).T
                        if index == 0:
                            torch.mul(piece, alpha, out=rows)
                        else:
                            rows.add_(piece, alpha=alpha)
                    # One sum finds a NaN/Inf anywhere; the slots confirm (a sum can overflow).
                    if not math.isfinite(float(total.sum())):
                        self._refuse_not_finite(block, total, first, part.size)
                if self.progress is not None:
                    self.progress(index + 1, batches)
        if index < 0:  # no micro-batch on this rank: it adds nothing to the sum
            for total in totals:
                total.zero_()
        return totals

    def _rows(self, block: Block | None, total: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """``(parameter, its rows of total)`` for the slots of ``block`` (all, for None)."""
        offset = 0 if block is None else block.start
        for slot in self.layout.slots_of(block):
            yield slot.name, total[slot.start - offset : slot.stop - offset]

    def _refuse_not_finite(
        self, block: Block | None, total: torch.Tensor, first: int, size: int
    ) -> None:
        """Refuse a product that is NaN/Inf on samples ``first`` … ``first+size-1``."""
        bad = [name for name, rows in self._rows(block, total) if not bool(rows.isfinite().all())]
        if not bad:
            return  # finite entries whose sum overflowed
        raise NumericalError(
            f"a {self.kind}-vector product is NaN/Inf on samples {first}-{first + size - 1} "
            f"(in {', '.join(bad[:4])})",
            "check those samples and the weights; try --dtype float64",
        )

    def _shrink(self, exc: BaseException) -> None:
        """Halve the vmap chunk (forward route), else the micro-batch, after running out."""
        self.release()
        release_cached(self.device)
        chunk = self.chunk_size or DEFAULT_CHUNK
        route = self.route.route if self.route is not None else METHODS[self.method]
        if route == FORWARD and chunk > 1:  # the reverse route takes one column at a time
            self.chunk_size = chunk // 2
            change = f"{self.chunk_size} columns per vmap call"
        elif self.micro_batch > 1:
            self.micro_batch = (min(self.micro_batch, self._largest_batch()) + 1) // 2
            change = f"micro-batches of {self.micro_batch}"
        else:
            raise MemoryLimitError(
                f"out of memory on {self.device} even with one sample per micro-batch and one "
                f"column per product ({_first_line(exc)})",
                "use --dtype float32, fewer layers (--layer), a device with more memory, or "
                "more processes (torchrun)",
            ) from exc
        log.warning("out of memory on %s; retrying with %s", self.device, change)

    def _largest_batch(self) -> int:
        return max(b.size for b in self.dataset.batches)

    def fit_memory(
        self,
        budget: int,
        source: str,
        *,
        fixed_micro_batch: bool,
        columns: int = 1,
        reserve: int = 0,
    ) -> MemoryPlan:
        """Size micro-batches and vmap chunks to ``budget`` bytes, from a measured forward.

        Planned for the route the rule takes (double backward for ``auto``). Keeps a
        micro-batch the user fixed (only the chunk then adapts), leaves ``reserve`` bytes to
        the algorithm (its Lanczos basis, probes, diagonals), and caches gradient graphs only in
        what is left. The result does not depend on the free memory of the moment; a plan that
        does not fit in it is refused up front (:func:`~.memory.check_free`).

        Args:
            budget: Bytes the whole run may use.
            source: Where the budget comes from, for messages.
            fixed_micro_batch: Whether the user fixed the micro-batch.
            columns: Columns one data pass carries at most.
            reserve: Bytes the algorithm keeps besides the products.
        """
        first = next(iter(micro_batches(self.dataset, self._largest_batch(), self.weighting)))
        with math_attention():  # the kernel the products will use saves what it saves
            mb = self._micro_batch_loss(first[1])
            # The route the rule will take (the check runs with the first product, so a run
            # that needs none pays nothing); a forward fallback is resized by _shrink.
            route = self.route.route if self.route is not None else METHODS[self.method]
            plan = plan_memory(
                mb,
                budget=max(1, budget - reserve),
                source=source,
                micro_batch=self.micro_batch,
                chunk_size=self.chunk_size or DEFAULT_CHUNK,
                fixed_micro_batch=fixed_micro_batch,
                samples=self._largest_batch(),
                vmapped=route == FORWARD,
                columns=columns,
            )
        if reserve >= budget:
            raise MemoryLimitError(
                f"the algorithm alone needs {format_size(reserve)}, more than the "
                f"{format_size(budget)} budget ({source})",
                "raise --max-memory, or ask for less (fewer steps, probes or layers)",
            )
        self.micro_batch, self.chunk_size = plan.micro_batch, plan.chunk_size
        self.memory, self._held = replace(plan, budget=budget), 0
        self.reserve(reserve)
        return self.memory

    def spare_bytes(self) -> int:
        """Bytes of the budget left to the algorithm: not planned for products or reserved."""
        if self.memory is None:
            return total_bytes(self.device) // 4
        return max(0, self.memory.budget - self.memory.estimate - self._held)

    def reserve(self, size: int) -> None:
        """Set ``size`` more bytes of the budget aside for the algorithm's own vectors.

        The gradient-graph cache gets only what is left, and a plan that no longer fits in the
        free memory is refused now, before any product (:func:`~.memory.check_free`). The plan
        records the most ever reserved at once.
        """
        if self.memory is None or size <= 0:
            return
        self._held += size
        self.memory = replace(self.memory, reserve=max(self.memory.reserve, self._held))
        self.cache_bytes = min(self.cache_bytes, self.spare_bytes())
        check_free(self.memory.estimate + self._held, self.device, source=self.memory.source)

    def free(self, size: int) -> None:
        """Give back ``size`` reserved bytes (a phase of the algorithm is over)."""
        self._held = max(0, self._held - size)

    def _check_once(self, mb: MicroBatchLoss) -> None:
        """Refuse a random loss before any product is spent on it (once per operator)."""
        if not self._checked:
            single = self.num_micro_batches == 1 and not self.group.active
            check_modules(self.model, single_batch=single)
            check_repeatable(check_slice(mb))
            self._checked = True

    def _apply(self, index: int, part: object) -> Apply:
        """The product closure of micro-batch ``index``: cached, or built by the checked route."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        mb = self._micro_batch_loss(part)
        self._check_once(mb)
        if self.route is None and self._self_checking():
            return self._first_reverse(index, mb)
        if self.route is None:
            self.route = self._choose_route(mb)
        apply, graph_bytes = build(self.kind, self.route.route, mb, chunk_size=self.chunk_size)
        self._maybe_cache(index, apply, graph_bytes)
        return apply

    def _self_checking(self) -> bool:
        """Whether double backward is checked by its own first products, not on a slice.

        The default (and forced reverse) route on one process: a separate check on a slice of
        the first micro-batch would cost a graph and two products of its own. With several
        ranks every rank must agree on the route first, so they keep the slice check.
        """
        return self.verify and METHODS[self.method] in (None, REVERSE) and not self.group.active

    def _first_reverse(self, index: int, mb: MicroBatchLoss) -> Apply:
        """Double backward on the whole first micro-batch, falling back where it cannot run.

        A missing double-backward rule shows when the graph is built or at the first product;
        either way the full route check on a slice then chooses another route. Afterwards the
        first two columns computed are judged for symmetry (:meth:`_judge_symmetry`).
        """
        gradient: Params = {}
        try:
            with WatchAttention() as watch:
                apply, graph_bytes = build(
                    self.kind, REVERSE, mb, chunk_size=self.chunk_size, gradient=gradient
                )
        except MISSING_RULE as exc:
            if is_out_of_memory(exc):
                raise
            return self._fall_back(index, mb)
        self.route = self_checked_reverse(self.method, watch.attention)
        self._symmetry = FirstColumns()
        if gradient and self.num_micro_batches == 1:
            self._gradient = gradient

        def first_use(block: Params) -> Params:
            if self._proven:
                return apply(block)
            try:
                product = apply(block)
            except MISSING_RULE as exc:
                if is_out_of_memory(exc):
                    raise
                self.release()
                return self._fall_back(index, mb)(block)
            self._proven = True
            return product

        self._maybe_cache(index, first_use, graph_bytes)
        return first_use

    def _fall_back(self, index: int, mb: MicroBatchLoss) -> Apply:
        """The route the full check on a slice chooses, built on micro-batch ``index``."""
        self._symmetry = None
        self.route = self._choose_route(mb)
        apply, graph_bytes = build(self.kind, self.route.route, mb, chunk_size=self.chunk_size)
        self._maybe_cache(index, apply, graph_bytes)
        return apply

    def _judge_symmetry(
        self, requests: list[tuple[Block | None, torch.Tensor]], totals: list[torch.Tensor]
    ) -> None:
        """Feed a pass's columns to the pending symmetry check; refuse an asymmetric result."""
        assert self._symmetry is not None
        assert self.route is not None
        for (block, columns), total in zip(requests, totals, strict=True):
            self._symmetry.feed(block, columns, total)
        defect = self._symmetry.judge()
        if defect is None:
            return
        if too_large(defect, self.dtype):
            raise asymmetry_error(self.kind, REVERSE, defect, "between the first two columns")
        self.route = judged_reverse(self.route, defect)

    def _choose_route(self, mb: MicroBatchLoss) -> RouteReport:
        """The route by rule, checked on a slice of the first micro-batch; rank 0's for all."""
        if not self.verify:
            route = METHODS[self.method]
            assert route is not None
            return RouteReport(route, self.method, "as requested, unchecked")
        report = select_route(self.kind, self.method, mb)
        self.counters.check_products += report.check_products
        agreed = self.group.agree(report.route)
        if agreed == report.route:
            return report
        try:  # every rank computes with rank 0's route
            build(self.kind, agreed, check_slice(mb), chunk_size=self.chunk_size)
        except (RuntimeError, NotImplementedError) as exc:
            raise DifferentiationError(
                f"rank {self.group.rank} cannot use {agreed}, which rank 0 chose: "
                f"{_first_line(exc)}",
                "pass --hvp-method with a route every rank can run",
            ) from exc
        return RouteReport(agreed, report.requested, f"rank 0's choice: {report.reason}")

    def _maybe_cache(self, index: int, apply: Apply, graph_bytes: int) -> None:
        """Keep a reverse-route closure (it holds the micro-batch's gradient graph) in budget.

        With a single micro-batch the graph is free to keep: the plan of a pass already counts
        it alive (:data:`~.memory.REVERSE_ACTIVATIONS_PER_SAMPLE`), and no other micro-batch's
        graph will join it. Keeping it saves every later pass its forward and first backward.
        """
        if self.route is None or self.route.route != REVERSE:
            return
        alone = self.num_micro_batches == 1 and not self._cache
        if alone or self.graph_bytes + graph_bytes <= self.cache_bytes:
            self._cache[index] = apply
            self.graph_bytes += graph_bytes


def _default_cache_bytes(device: torch.device) -> int:
    """A quarter of the total memory of ``device`` (a plan lowers it to what it leaves free)."""
    return total_bytes(device) // 4


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
