"""Each micro-batch's product closure for the curvature operator, and the route that builds it.

The first product decides the route: on one process double backward runs on the whole first
micro-batch and is judged by the symmetry of its own first two columns (no extra product),
falling back to the slice check of :mod:`.route_check` where it cannot run; with several ranks,
or a forced route, the slice check decides up front. The closures of the reverse route hold
their micro-batch's gradient graph and are cached within the operator's budget, and the first
build's gradient is kept, so that Lanczos can start from it for free. This is the operator's
route-and-cache state, kept apart from its data passes (:mod:`.accumulation`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from hesscli.engine.determinism import check_modules, check_repeatable
from hesscli.engine.device_memory import is_out_of_memory
from hesscli.engine.functional import Params, math_attention, micro_batches
from hesscli.engine.layout import Block
from hesscli.engine.precision import float32_precision
from hesscli.engine.products import Apply, MicroBatchLoss
from hesscli.engine.route_check import select_route
from hesscli.engine.routes import (
    METHODS,
    MISSING_RULE,
    REVERSE,
    RouteReport,
    WatchAttention,
    build,
    check_slice,
    judged_reverse,
    self_checked_reverse,
)
from hesscli.engine.symmetry import FirstColumns, asymmetry_error, too_large
from hesscli.errors import DifferentiationError, first_line

if TYPE_CHECKING:
    from hesscli.engine.operator import CurvatureOperator


class Closures:
    """The product closures of one operator's micro-batches, built by its route and cached.

    Sets ``op.route`` with the first closure it builds, and keeps ``op.graph_bytes`` (the
    bytes of the gradient graphs cached) up to date.

    Args:
        op: The operator whose products the closures compute.
        loss_of: Builds a micro-batch's loss on the operator's device and dtype.
        cache: Where the cached closures go, by micro-batch index (the operator's own dict).
    """

    def __init__(
        self,
        op: CurvatureOperator,
        loss_of: Callable[[object], MicroBatchLoss],
        cache: dict[int, Apply],
    ) -> None:
        self.op = op
        self.loss_of = loss_of
        self.cache = cache
        self.checked = False
        self.symmetry: FirstColumns | None = None  # the default route's pending check
        self.proven = False  # whether a product of the chosen route has run
        self.gradient: Params | None = None  # see free_gradient

    def release(self) -> None:
        """Drop the cached gradient graphs (the next product rebuilds what it needs)."""
        self.cache.clear()
        self.op.graph_bytes = 0

    def free_gradient(self) -> torch.Tensor | None:
        """∇L as a ``(P,)`` vector when it costs no extra work, else None (once per operator).

        See :meth:`~.operator.CurvatureOperator.free_gradient`: with one micro-batch on one
        process, the Hessian by self-checked double backward computes it on the way.
        """
        op = self.op
        if op.kind != "hessian" or op.num_micro_batches != 1 or not self.self_checking():
            return None
        if op.route is None:
            _, part, _ = next(iter(micro_batches(op.dataset, op.micro_batch, op.weighting)))
            try:
                with float32_precision(op.allow_tf32), math_attention():
                    self.apply(0, part)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                self.release()  # the first pass meets it again, and shrinks (see .accumulation)
                return None
        gradient, self.gradient = self.gradient, None
        if gradient is None:
            return None
        return op.layout.flatten({n: g[None] for n, g in gradient.items()})[:, 0]

    def _check_once(self, mb: MicroBatchLoss) -> None:
        """Refuse a random loss before any product is spent on it (once per operator)."""
        if not self.checked:
            single = self.op.num_micro_batches == 1 and not self.op.group.active
            check_modules(self.op.model, single_batch=single)
            check_repeatable(check_slice(mb))
            self.checked = True

    def apply(self, index: int, part: object) -> Apply:
        """The product closure of micro-batch ``index``: cached, or built by the checked route."""
        cached = self.cache.get(index)
        if cached is not None:
            return cached
        op = self.op
        mb = self.loss_of(part)
        self._check_once(mb)
        if op.route is None and self.self_checking():
            return self._first_reverse(index, mb)
        if op.route is None:
            op.route = self._choose_route(mb)
        apply, graph_bytes = build(op.kind, op.route.route, mb, chunk_size=op.chunk_size)
        self._maybe_cache(index, apply, graph_bytes)
        return apply

    def self_checking(self) -> bool:
        """Whether double backward is checked by its own first products, not on a slice.

        The default (and forced reverse) route on one process: a separate check on a slice of
        the first micro-batch would cost a graph and two products of its own. With several
        ranks every rank must agree on the route first, so they keep the slice check.
        """
        op = self.op
        return op.verify and METHODS[op.method] in (None, REVERSE) and not op.group.active

    def _first_reverse(self, index: int, mb: MicroBatchLoss) -> Apply:
        """Double backward on the whole first micro-batch, falling back where it cannot run.

        A missing double-backward rule shows when the graph is built or at the first product;
        either way the full route check on a slice then chooses another route. Afterwards the
        first two columns computed are judged for symmetry (:meth:`judge_symmetry`).
        """
        op = self.op
        gradient: Params = {}
        try:
            with WatchAttention() as watch:
                apply, graph_bytes = build(
                    op.kind, REVERSE, mb, chunk_size=op.chunk_size, gradient=gradient
                )
        except MISSING_RULE as exc:
            if is_out_of_memory(exc):
                raise
            return self._fall_back(index, mb)
        op.route = self_checked_reverse(op.method, watch.attention)
        self.symmetry = FirstColumns()
        if gradient and op.num_micro_batches == 1:
            self.gradient = gradient

        def first_use(block: Params) -> Params:
            if self.proven:
                return apply(block)
            try:
                product = apply(block)
            except MISSING_RULE as exc:
                if is_out_of_memory(exc):
                    raise
                self.release()
                return self._fall_back(index, mb)(block)
            self.proven = True
            return product

        self._maybe_cache(index, first_use, graph_bytes)
        return first_use

    def _fall_back(self, index: int, mb: MicroBatchLoss) -> Apply:
        """The route the full check on a slice chooses, built on micro-batch ``index``."""
        op = self.op
        self.symmetry = None
        op.route = self._choose_route(mb)
        apply, graph_bytes = build(op.kind, op.route.route, mb, chunk_size=op.chunk_size)
        self._maybe_cache(index, apply, graph_bytes)
        return apply

    def judge_symmetry(
        self, requests: list[tuple[Block | None, torch.Tensor]], totals: list[torch.Tensor]
    ) -> None:
        """Feed a pass's columns to the pending symmetry check; refuse an asymmetric result.

        Nothing to do once the check is judged, or when no check is pending (another route).
        """
        if self.symmetry is None or self.symmetry.done:
            return
        op = self.op
        assert op.route is not None
        for (block, columns), total in zip(requests, totals, strict=True):
            self.symmetry.feed(block, columns, total)
        defect = self.symmetry.judge()
        if defect is None:
            return
        if too_large(defect, op.dtype):
            raise asymmetry_error(op.kind, REVERSE, defect, "between the first two columns")
        op.route = judged_reverse(op.route, defect)

    def _choose_route(self, mb: MicroBatchLoss) -> RouteReport:
        """The route by rule, checked on a slice of the first micro-batch; rank 0's for all."""
        op = self.op
        if not op.verify:
            route = METHODS[op.method]
            assert route is not None
            return RouteReport(route, op.method, "as requested, unchecked")
        report = select_route(op.kind, op.method, mb)
        op.counters.check_products += report.check_products
        agreed = op.group.agree(report.route)
        if agreed == report.route:
            return report
        try:  # every rank computes with rank 0's route
            build(op.kind, agreed, check_slice(mb), chunk_size=op.chunk_size)
        except (RuntimeError, NotImplementedError) as exc:
            raise DifferentiationError(
                f"rank {op.group.rank} cannot use {agreed}, which rank 0 chose: {first_line(exc)}",
                "pass --hvp-method with a route every rank can run",
            ) from exc
        return RouteReport(agreed, report.requested, f"rank 0's choice: {report.reason}")

    def _maybe_cache(self, index: int, apply: Apply, graph_bytes: int) -> None:
        """Keep a reverse-route closure (it holds the micro-batch's gradient graph) in budget.

        With a single micro-batch the graph is free to keep: the plan of a pass already counts
        it alive (:data:`~.memory.REVERSE_ACTIVATIONS_PER_SAMPLE`), and no other micro-batch's
        graph will join it. Keeping it saves every later pass its forward and first backward.
        """
        op = self.op
        if op.route is None or op.route.route != REVERSE:
            return
        alone = op.num_micro_batches == 1 and not self.cache
        if alone or op.graph_bytes + graph_bytes <= op.cache_bytes:
            self.cache[index] = apply
            op.graph_bytes += graph_bytes
