"""True float32: TF32 (and oneDNN's bfloat16) off while hesscli computes, unless the user opts in.

PyTorch lets cuDNN convolutions use TF32 by default, and many training scripts turn it on for
matmuls too. TF32 keeps 10 mantissa bits (relative error ≈ 1e-3): a float32 Hessian tool would
quietly lose three of its seven digits on an Ampere-or-later GPU. Every product, gradient and
diagonal therefore runs inside :func:`float32_precision`, which switches TF32 off (or on, with
``--allow-tf32``) and restores the caller's settings afterwards, so a notebook that uses
hesscli's Python API keeps its own choice for its own code.

Two APIs control these flags. The legacy one (``torch.backends.cuda.matmul.allow_tf32``,
``torch.backends.cudnn.allow_tf32``, ``torch.set_float32_matmul_precision``) and, from torch
2.9, per-backend ``fp32_precision`` strings (``"ieee"``, ``"tf32"``, ``"none"`` = inherit).
Mixing them makes the legacy *getters* raise, so this module reads the new strings where they
exist, reads the legacy values only where that cannot fail, writes the legacy setters first
(they keep both APIs consistent) and then the new leaves explicitly (so that a ``"tf32"`` set
by the user on a parent such as ``torch.backends.fp32_precision`` is not inherited).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: The per-operation leaves of the new API that decide float32 matmuls, convolutions and RNNs
#: on CUDA/cuDNN and on the CPU's oneDNN (whose ``medium`` matmul precision means bfloat16).
_LEAVES = (
    ("cuda", "matmul"),
    ("cudnn", "conv"),
    ("cudnn", "rnn"),
    ("mkldnn", "matmul"),
    ("mkldnn", "conv"),
    ("mkldnn", "rnn"),
)


def tf32_used(allow_tf32: bool, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether TF32 can change a run's numbers: allowed, float32, and on a CUDA device."""
    return allow_tf32 and device.type == "cuda" and dtype == torch.float32


def matmul_precision(allow_tf32: bool) -> str:
    """``torch.set_float32_matmul_precision``'s value while hesscli computes."""
    return "high" if allow_tf32 else "highest"


def _leaf(backend: str, op: str) -> object | None:
    """``torch.backends.<backend>.<op>`` when it has the new ``fp32_precision`` attribute."""
    holder = getattr(getattr(torch.backends, backend, None), op, None)
    return holder if holder is not None and hasattr(holder, "fp32_precision") else None


def _try(getter: object) -> object | None:
    """A legacy getter's value, or ``None`` where mixed APIs make it raise."""
    try:
        return getter()  # type: ignore[operator]
    except RuntimeError:
        return None


@dataclass(frozen=True)
class _Saved:
    """The caller's settings, as far as they can be read."""

    matmul_precision: str | None
    cudnn_tf32: bool | None
    leaves: tuple[tuple[object, str], ...]


def _save() -> _Saved:
    leaves = [(holder, holder.fp32_precision) for b, o in _LEAVES if (holder := _leaf(b, o))]
    return _Saved(
        _try(torch.get_float32_matmul_precision),  # type: ignore[arg-type]
        _try(lambda: bool(torch.backends.cudnn.allow_tf32)),  # type: ignore[arg-type]
        tuple(leaves),
    )


def _apply(allow_tf32: bool) -> None:
    torch.set_float32_matmul_precision(matmul_precision(allow_tf32))
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    for backend, op in _LEAVES:
        holder = _leaf(backend, op)
        if holder is not None:  # the CPU (oneDNN) stays true float32: the opt-in is for GPUs
            tf32 = allow_tf32 and backend != "mkldnn"
            holder.fp32_precision = "tf32" if tf32 else "ieee"  # type: ignore[attr-defined]


def _restore(saved: _Saved) -> None:
    if saved.matmul_precision is not None:
        torch.set_float32_matmul_precision(saved.matmul_precision)
    if saved.cudnn_tf32 is not None:
        torch.backends.cudnn.allow_tf32 = saved.cudnn_tf32
    for holder, value in saved.leaves:  # last: the exact strings, "none" included
        holder.fp32_precision = value  # type: ignore[attr-defined]


@contextlib.contextmanager
def float32_precision(allow_tf32: bool = False) -> Iterator[None]:
    """Compute in true float32 (TF32 and oneDNN bfloat16 off) inside; restore the caller's after.

    Nested uses are fine: each restores what it found. Example::

        >>> import torch
        >>> before = torch.backends.cudnn.allow_tf32
        >>> with float32_precision():
        ...     torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
        (False, 'highest')
        >>> torch.backends.cudnn.allow_tf32 == before
        True

    Args:
        allow_tf32: Let CUDA matmuls and cuDNN use TF32 (``--allow-tf32``): faster on
            Ampere-or-later GPUs, with a relative error of about 1e-3 per operation.
    """
    saved = _save()
    _apply(allow_tf32)
    try:
        yield
    finally:
        _restore(saved)


def backend_settings() -> dict[str, object]:
    """Every precision flag as torch reports it now (for ``benchmarks/gpu_check.sh``).

    Legacy getters that raise (mixed APIs) are reported as ``None``.
    """
    report: dict[str, object] = {
        "torch": torch.__version__,
        "float32_matmul_precision": _try(torch.get_float32_matmul_precision),
        "cuda.matmul.allow_tf32": _try(lambda: torch.backends.cuda.matmul.allow_tf32),
        "cudnn.allow_tf32": _try(lambda: torch.backends.cudnn.allow_tf32),
        "cuda.matmul.allow_fp16_reduced_precision_reduction": _try(
            lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
        ),
        "cuda.matmul.allow_bf16_reduced_precision_reduction": _try(
            lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        ),
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
    }
    for backend, op in _LEAVES:
        holder = _leaf(backend, op)
        if holder is not None:
            report[f"{backend}.{op}.fp32_precision"] = holder.fp32_precision  # type: ignore[attr-defined]
    return report
