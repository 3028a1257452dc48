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

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from hesscli.batches import Dataset
from hesscli.engine.accumulation import run_pass, summed_gradient
from hesscli.engine.budget import DEFAULT_CHUNK, Budget, default_cache_bytes
from hesscli.engine.closures import Closures
from hesscli.engine.distributed import SINGLE, Group
from hesscli.engine.functional import DEFAULT_MICRO_BATCH, micro_batches, to_device
from hesscli.engine.heap import HeapTrimmer, keep_freed_memory
from hesscli.engine.layout import Block, Layout
from hesscli.engine.memory import MemoryPlan
from hesscli.engine.params import list_layers
from hesscli.engine.products import Apply, LossFn, MicroBatchLoss
from hesscli.engine.routes import METHODS, RouteReport
from hesscli.engine.weighting import Weighting
from hesscli.errors import ConfigError

KINDS = ("hessian", "ggn")
REDUCTIONS = ("mean", "sum")


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
            differences, where a route cannot run; see :mod:`.route_check`), ``"forward"``,
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
        self._budget = Budget(self, self._micro_batch_loss)  # sizes, and bytes held
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
        self.cache_bytes = default_cache_bytes(self.device) if cache_bytes is None else cache_bytes
        self.counters = Counters()
        self.route: RouteReport | None = None
        self.graph_bytes = 0
        self._cache: dict[int, Apply] = {}  # each micro-batch's closure (see .closures)
        self._closures = Closures(self, self._micro_batch_loss, self._cache)
        self._heap = HeapTrimmer()
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
        return self._closures.free_gradient()

    def start_gradient(self) -> torch.Tensor | None:
        """∇L as a ``(P,)`` vector, for starting Lanczos: free when it can be, else one pass.

        Free (:meth:`free_gradient`) with one micro-batch on one process; otherwise one forward
        and backward pass over this rank's micro-batches, weighted as the products are and
        summed over the ranks. Every split of the data and every number of ranks thus gives
        the same vector up to round-off, so the eigenvalues that start from it do not depend
        on ``--micro-batch`` or torchrun. None if the pass runs out of memory.
        """
        free = self.free_gradient()
        return free if free is not None else summed_gradient(self)

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
        self._closures.release()

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
        """One pass over the micro-batches, summed over the ranks (see :func:`.run_pass`)."""
        return run_pass(self, self._closures, self._heap, requests, self._budget.shrink)

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
        return self._budget.fit(
            budget, source, fixed_micro_batch=fixed_micro_batch, columns=columns, reserve=reserve
        )

    def spare_bytes(self) -> int:
        """Bytes of the budget left to the algorithm: not planned for products or reserved."""
        return self._budget.spare_bytes()

    def reserve(self, size: int) -> None:
        """Set ``size`` more bytes of the budget aside for the algorithm's own vectors.

        The gradient-graph cache gets only what is left, and a plan that no longer fits in the
        free memory is refused now, before any product (:func:`~.memory.check_free`). The plan
        records the most ever reserved at once.
        """
        self._budget.reserve(size)

    def free(self, size: int) -> None:
        """Give back ``size`` reserved bytes (a phase of the algorithm is over)."""
        self._budget.free(size)
