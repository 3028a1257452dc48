"""What a Lanczos run holds in memory, counted before it starts, and the basis a budget allows.

A run's peak is its parameter-length vectors: the basis (and the products, when they are kept),
the product handed to each step, a random restart draw, and the Ritz vectors assembled at the
end. Callers plan with these numbers before the first product (a bounded ``max_basis``, the
plan line of a command), so the counting lives apart from :class:`~.lanczos.Lanczos` itself and
is kept in step with what :mod:`.lanczos` and :mod:`.lanczos_slabs` allocate.
"""

from __future__ import annotations

import torch

#: Parameter-length vectors per column that a step holds besides the basis: the product
#: handed to :meth:`~.lanczos.Lanczos.advance` and a random restart draw.
STEP_VECTORS = 2
#: Parameter-length vectors per Ritz vector whose residual is computed: y, C·y, C·y − θ·y.
RITZ_VECTORS = 3


def lanczos_bytes(
    size: int,
    columns: int,
    basis_vectors: int,
    dtype: torch.dtype,
    keep_products: bool = False,
    *,
    ritz_vectors: int = 0,
) -> int:
    """Bytes of parameter-length vectors a :class:`~.lanczos.Lanczos` run holds at its peak.

    Args:
        size: P, the rows of a vector.
        columns: K, the processes per row (probe columns); the blocks of a run share rows.
        basis_vectors: Vectors kept per column: ``max_basis`` (bounded), ``steps + 1``
            (unbounded), 2 without reorthogonalisation.
        dtype: The working dtype.
        keep_products: Whether every product is kept too (doubles the basis).
        ritz_vectors: Ritz vectors assembled at the end to recompute residuals from kept
            products (top_k + bottom_k; 0 when the products are not kept).

    Returns:
        The bytes, counting the product handed to each step (the caller's matmat output) but
        not the matmat's own working memory.

    Example::

        >>> lanczos_bytes(1000, 1, 11, torch.float32)
        52000
    """
    per_column = basis_vectors * (2 if keep_products else 1) + STEP_VECTORS
    itemsize = torch.empty((), dtype=dtype).element_size()
    return itemsize * size * (columns * per_column + RITZ_VECTORS * ritz_vectors)


def basis_within(
    budget: int,
    size: int,
    columns: int,
    dtype: torch.dtype,
    *,
    keep_products: bool = False,
    ritz_vectors: int = 0,
) -> int:
    """The most basis vectors per column for which :func:`lanczos_bytes` fits ``budget``.

    Zero when not even the step's own vectors fit.

    Example::

        >>> basis_within(52000, 1000, 1, torch.float32)
        11
    """
    fixed = lanczos_bytes(size, columns, 0, dtype, keep_products, ritz_vectors=ritz_vectors)
    each = lanczos_bytes(size, columns, 1, dtype, keep_products) - lanczos_bytes(
        size, columns, 0, dtype, keep_products
    )
    return max(0, (budget - fixed) // each)
